"""Where a batch's time goes: stages timed on the driver, task time by kind, kernel time.

Three sources, combined per family and day by :func:`breakdown`:

- wall-clock stages on the driver (:class:`Stages`): opening and validating the inputs,
  building the graph, computing and writing the results;
- the time of every Dask task, summed by what the task does (:func:`task_kind`): reading
  and decoding Zarr chunks, encoding and writing them, the family's kernel tasks, other
  work; on the local schedulers through a Dask callback, on a distributed cluster through
  its task stream; work a family runs on its own threads, without Dask, counts itself
  (:func:`timed_task`);
- the kernels' own time (:func:`timed_kernel` wraps every kernel call), summed per
  process and fetched from the workers of a distributed cluster.

Scheduling (and idle) time is the compute stage's wall time less the time its tasks took,
divided over the threads that ran them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from dask.callbacks import Callback
from dask.utils import key_split

_lock = threading.Lock()
_kernel_seconds: dict[str, float] = defaultdict(float)


def timed_kernel(name: str, fn: Callable) -> Callable:
    """``fn`` with its run time added to this process's kernel counter ``name``."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - t0
            with _lock:
                _kernel_seconds[name] += elapsed

    return run


# where timed_task adds its time: the stage open in this context (a day's stage, or a
# day's results written in the background); thread pools that run such work submit it
# with the submitting context (``in_context``)
_task_sink: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("gpu_risk_task_sink",
                                                                                      default=None)


@contextlib.contextmanager
def timed_task(kind: str) -> Iterator[None]:
    """Count the enclosed work as task time of ``kind`` (``read``, ``write``, ``other``)
    in the stage open where it was submitted: for work a family runs on its own threads,
    outside Dask's schedulers."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - t0
        sink = _task_sink.get()
        if sink is not None:
            with _lock:
                sink[kind] = sink.get(kind, 0.0) + elapsed


def in_context(fn: Callable) -> Callable:
    """``fn`` bound to the caller's context, for a thread pool's ``submit``: its
    :func:`timed_task` time then counts in the caller's stage."""
    context = contextvars.copy_context()

    def run(*args, **kwargs):
        return context.copy().run(fn, *args, **kwargs)  # a copy per call: threads run it at once

    return run


def kernel_seconds() -> dict[str, float]:
    """This process's kernel time so far, per kernel (seconds)."""
    with _lock:
        return dict(_kernel_seconds)


def task_kind(key) -> str:
    """``read`` (Zarr chunks read and decoded), ``write`` (encoded and stored) or ``other``,
    by the task's name; Dask fuses tasks, so a fused read-and-decode counts as a read."""
    name = key_split(key)
    if "store" in name:
        return "write"
    if name.startswith(("open_dataset", "original", "from-zarr", "read-ticks")) or "decode_block" in name:
        return "read"
    return "other"


class _TaskClock(Callback):
    """Sums the time of tasks by kind on the synchronous and threaded schedulers, for the
    computations started in the stage that made it. Dask's local callbacks see every
    computation of the process (the next day opened on a thread of its own computes beside
    this day's stage): its task callbacks run in the computing caller's thread, whose
    context names the stage it belongs to (``_task_sink``, as :func:`timed_task` uses it)."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict = {}
        self._sink = _task_sink.get()

    def _pretask(self, key, dsk, state):
        if _task_sink.get() is self._sink:
            self._started[key] = time.perf_counter()

    def _posttask(self, key, result, dsk, state, worker_id):
        t0 = self._started.pop(key, None)
        if t0 is not None:
            self.seconds[task_kind(key)] += time.perf_counter() - t0


class TaskProgress(Callback):
    """Calls ``report(done, total)`` as the tasks of computations on the synchronous and
    threaded schedulers finish (at most every ``every`` seconds, and at the end of each):
    progress within a day, where a day is one long computation."""

    def __init__(self, report: Callable[[int, int], None], every: float = 0.25):
        super().__init__()
        self.report, self.every = report, every
        self.done = self.total = 0
        self._last = 0.0

    def _start(self, dsk):
        self.total += len(dsk)
        self.report(self.done, self.total)

    def _posttask(self, key, result, dsk, state, worker_id):
        self.done += 1
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            self.report(self.done, self.total)

    def _finish(self, dsk, state, errored):
        self.report(self.done, self.total)


def _client():
    try:
        from distributed import default_client  # noqa: PLC0415

        return default_client()
    except (ImportError, ValueError):
        return None


def _all_kernel_seconds(client) -> dict[str, float]:
    totals = defaultdict(float, kernel_seconds())
    if client is not None:
        for per_worker in client.run(kernel_seconds).values():
            for name, seconds in per_worker.items():
                totals[name] += seconds
    return dict(totals)


class Stages:
    """Wall-clock stages of one day, plus task and kernel time while the stages run."""

    def __init__(self, threads: int):
        self.threads = threads
        self.wall: dict[str, float] = defaultdict(float)
        self.tasks: dict[tuple[str, str], float] = defaultdict(float)
        self.kernels: dict[str, float] = defaultdict(float)
        self._client = _client()
        self.local = self._client is None  # tasks run in this process (sync or threads)

    @contextlib.contextmanager
    def _own_tasks(self, name: str) -> Iterator[None]:
        """Count the :func:`timed_task` time of work started in the enclosed block (on any
        thread it hands work to through :func:`in_context`) as stage ``name``'s."""
        own: dict[str, float] = {}
        token = _task_sink.set(own)
        try:
            yield
        finally:
            _task_sink.reset(token)
            for kind, seconds in own.items():
                self.tasks[(name, kind)] += seconds

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        before = _all_kernel_seconds(self._client)
        t0 = time.perf_counter()
        with self._own_tasks(name):
            if self._client is not None:
                from distributed import get_task_stream  # noqa: PLC0415

                with get_task_stream(self._client) as stream:
                    yield
                for task in stream.data:
                    for part in task.get("startstops", ()):
                        if part.get("action") == "compute":
                            self.tasks[(name, task_kind(task["key"]))] += part["stop"] - part["start"]
            else:
                with _TaskClock() as clock:
                    yield
                for kind, seconds in clock.seconds.items():
                    self.tasks[(name, kind)] += seconds
        self.wall[name] += time.perf_counter() - t0
        after = _all_kernel_seconds(self._client)
        for name_, seconds in after.items():
            self.kernels[name_] += seconds - before.get(name_, 0.0)

    @contextlib.contextmanager
    def background(self, name: str) -> Iterator[None]:
        """A stage run on another thread while the driver goes on (a day's results written
        while the next day is computed, the next day opened): its wall time and its own task
        time, Dask's included on the local schedulers; not the kernels' (counted
        process-wide, they would take the driver's)."""
        with self._own_tasks(name):
            t0 = time.perf_counter()
            clock = _TaskClock() if self._client is None else None
            try:
                with clock if clock is not None else contextlib.nullcontext():
                    yield
            finally:
                self.wall[name] += time.perf_counter() - t0
                for kind, seconds in (clock.seconds.items() if clock is not None else ()):
                    self.tasks[(name, kind)] += seconds

    def summary(self) -> dict:
        """Where the day's time went.

        ``wall``: seconds per driver stage (``open_validate``, ``graph``, ``compute_write``);
        ``threads``: the threads that run tasks; ``task_seconds``: time inside tasks, summed
        over threads, by kind (``read_decode``, ``kernel``, ``encode_write``, ``other``);
        ``kernels``: each kernel's seconds; ``breakdown``: wall-clock seconds that add up to
        the day's wall time: each kind of task work divided by the threads, the driver's own
        time in ``open_validate`` and ``graph`` (their wall less the tasks they ran, e.g.
        a family that computes its inputs eagerly), and ``scheduling_idle`` (the compute
        stage's wall less its tasks' share)."""
        threads = self.threads
        per_stage: dict[str, float] = defaultdict(float)
        kinds: dict[str, float] = defaultdict(float)
        for (stage, kind), seconds in self.tasks.items():
            per_stage[stage] += seconds
            kinds[kind] += seconds
        kernel = sum(self.kernels.values())
        task_seconds = {"read_decode": kinds["read"], "kernel": kernel, "encode_write": kinds["write"],
                        "other": max(kinds["other"] - kernel, 0.0)}
        breakdown = {
            "open_validate": max(self.wall["open_validate"] - per_stage["open_validate"] / threads, 0.0),
            "graph": max(self.wall["graph"] - per_stage["graph"] / threads, 0.0),
            **{kind: seconds / threads for kind, seconds in task_seconds.items()},
            "scheduling_idle": max(self.wall["compute_write"] - per_stage["compute_write"] / threads, 0.0),
        }
        return {
            "wall": {k: round(v, 4) for k, v in self.wall.items()},
            "threads": threads,
            "task_seconds": {k: round(v, 4) for k, v in task_seconds.items()},
            "kernels": {k: round(v, 4) for k, v in self.kernels.items() if v},
            "breakdown": {k: round(v, 4) for k, v in breakdown.items()},
        }
