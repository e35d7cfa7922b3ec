"""Where the Dask graph runs: ``auto`` (threads, or a LocalCluster under a memory limit),
``sync``, ``threads``, ``local`` (a LocalCluster on this machine, LocalCUDACluster when
computing on GPUs), ``slurm`` (workers started as SLURM jobs through dask-jobqueue, as
the workflow's ``cluster`` section says) or the ADDRESS of a running scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import dask
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class ClusterConfig(BaseModel):
    """Workers on a job scheduler (``--scheduler slurm``): dask-jobqueue submits ``jobs``
    SLURM jobs, each running ``processes`` Dask worker processes on ``cores`` cores and
    ``memory``; the scheduler runs in this process. With ``--backend gpu`` each job runs
    dask-cuda's worker (``python -m gpu_risk.cuda_worker``), one worker per GPU it sees."""

    model_config = ConfigDict(extra="forbid")
    jobs: int = Field(default=2, ge=1, description="SLURM jobs to submit")
    cores: int = Field(default=1, ge=1, description="cores per job")
    processes: int = Field(default=1, ge=1, description="Dask worker processes per job")
    memory: str = Field(default="4GB", description="memory per job")
    walltime: str = "01:00:00"
    queue: str | None = Field(default=None, description="partition (sbatch -p)")
    account: str | None = Field(default=None, description="account (sbatch -A)")
    job_extra_directives: list[str] = Field(default=[], description="more #SBATCH lines, e.g. --gres=gpu:1")
    job_script_prologue: list[str] = Field(default=[], description="shell lines before the worker starts")
    python: str | None = Field(default=None, description="the workers' Python (default: this one)")
    worker_command: str | None = Field(default=None, description="module the job runs with python -m (default: "
                                                         "Dask's worker, or dask-cuda's on --backend gpu)")
    interface: str | None = Field(default=None, description="network interface of workers and scheduler")
    local_directory: str | None = None
    log_directory: str | None = Field(default=None, description="where the jobs' output goes")
    start_timeout: float = Field(default=300.0, gt=0, description="seconds to wait for every worker to join")


def _local_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_scheduler(spec: str, memory_limit: str | None = None, dashboard: bool = False) -> str:
    """``auto``: the threaded scheduler on this machine, or a LocalCluster when a per-worker
    memory limit or the dashboard is asked for (only worker processes enforce a limit; only
    a distributed scheduler has a dashboard). On one machine threads ran the imbalance batch
    2.5x and the overnight workflow 2x as fast as a LocalCluster, which moves every task's
    result between processes (docs/performance.md)."""
    if spec == "auto":
        return "local" if memory_limit or dashboard else "threads"
    if spec == "slurm" and memory_limit:
        raise ValueError("with --scheduler slurm, set the memory per job in the workflow's cluster section")
    if dashboard and spec in ("sync", "threads"):
        raise ValueError(f"--dashboard needs a distributed scheduler (local or an ADDRESS), not {spec!r}")
    return spec


@contextlib.contextmanager
def dask_scheduler(spec: str = "auto", *, backend: str = "cpu", memory_limit: str | None = None,
                   n_workers: int | None = None, dashboard: bool = False,
                   cluster: ClusterConfig | None = None) -> Iterator[str]:
    """Run the enclosed Dask computations on ``spec``; yields a one-line description.

    ``local`` starts one single-threaded worker process per core (kernels are single-
    threaded numba loops, so processes avoid the GIL and nested thread pools), each with
    ``memory_limit`` (Dask spills to disk above it); with ``backend="gpu"`` and dask-cuda
    installed it starts one worker per GPU instead. ``dashboard``: a local cluster serves
    Dask's dashboard on 127.0.0.1 (a free port; the description gives its address).
    """
    spec = resolve_scheduler(spec, memory_limit, dashboard)
    # the dashboard listens on loopback only, and only when asked for
    board = "127.0.0.1:0" if dashboard else None
    if spec == "sync":
        with dask.config.set(scheduler="synchronous"):
            yield "Dask synchronous scheduler (one thread)"
        return
    if spec == "threads":
        with dask.config.set(scheduler="threads"):
            yield f"Dask threaded scheduler ({_local_workers()} threads)"
        return
    from distributed import Client, LocalCluster  # noqa: PLC0415

    if spec == "slurm":
        with _slurm(cluster or ClusterConfig(), backend, dashboard) as what:
            yield what
        return
    if spec == "local":
        local: Any = None
        if backend == "gpu":
            try:
                from dask_cuda import LocalCUDACluster  # noqa: PLC0415

                local = LocalCUDACluster(memory_limit=memory_limit or "auto", dashboard_address=board)
                what = "LocalCUDACluster"
            except ImportError:
                log.warning("dask-cuda not installed: using a CPU LocalCluster with GPU kernels")
        if local is None:
            workers = n_workers or _local_workers()
            local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                 memory_limit=memory_limit or "auto", dashboard_address=board)
            what = f"LocalCluster ({workers} worker processes x 1 thread)"
        try:
            with Client(local) as client:
                link = f"; dashboard {client.dashboard_link}" if dashboard else ""
                yield f"{what} at {client.scheduler.address}{link}"
        finally:
            local.close()
        return
    limit = connect_timeout_s()
    try:
        client = Client(spec, timeout=f"{limit}s")
    except (OSError, TimeoutError) as exc:
        raise RuntimeError(f"no Dask scheduler answered at {spec} within {limit:g} s ({exc})") from None
    with client, _workers_watched(client, spec) as watch:
        n = len(client.scheduler_info().get("workers", {}))
        link = f"; dashboard {client.dashboard_link}" if dashboard else ""
        try:
            yield f"Dask scheduler at {spec} ({n} workers){link}"
        except BaseException as exc:  # asyncio's CancelledError is not an Exception
            if watch.reason:  # the watchdog closed the client: say why, not how it broke
                raise RuntimeError(watch.reason) from exc
            raise


@contextlib.contextmanager
def _slurm(cfg: ClusterConfig, backend: str, dashboard: bool) -> Iterator[str]:
    """A SLURMCluster of ``cfg.jobs`` jobs; every worker joined before the work starts, or
    one clear error (the jobs are cancelled either way)."""
    import sys  # noqa: PLC0415

    try:
        from dask_jobqueue import SLURMCluster  # noqa: PLC0415
    except ImportError:
        raise RuntimeError("--scheduler slurm needs dask-jobqueue: pip install 'gpu_risk[cluster]'") from None
    from distributed import Client  # noqa: PLC0415
    from distributed.comm.core import CommClosedError  # noqa: PLC0415

    command = cfg.worker_command or ("gpu_risk.cuda_worker" if backend == "gpu" else "distributed.cli.dask_worker")
    options: dict[str, Any] = {
               "cores": cfg.cores, "processes": cfg.processes, "memory": cfg.memory, "walltime": cfg.walltime,
               "queue": cfg.queue, "account": cfg.account, "job_extra_directives": list(cfg.job_extra_directives),
               "job_script_prologue": list(cfg.job_script_prologue), "python": cfg.python or sys.executable,
               "worker_command": command, "interface": cfg.interface, "local_directory": cfg.local_directory,
               "log_directory": cfg.log_directory,
               "scheduler_options": {"dashboard_address": "127.0.0.1:0" if dashboard else None}}
    try:
        slurm = SLURMCluster(**{k: v for k, v in options.items() if v is not None})
    except (OSError, RuntimeError, ValueError) as exc:
        raise RuntimeError(f"cannot start a SLURM cluster: {exc}") from None
    try:
        slurm.scale(jobs=cfg.jobs)
        expected = cfg.jobs * cfg.processes
        with Client(slurm) as client:
            _wait_for_slurm_workers(client, slurm, expected, cfg)
            link = f"; dashboard {client.dashboard_link}" if dashboard else ""
            # jobs that end (walltime, scancel, a lost node) leave the run without workers:
            # the same watchdog as for a scheduler ADDRESS turns that into one line
            with _workers_watched(client, "the SLURM cluster's scheduler") as watch:
                try:
                    yield (f"SLURMCluster ({cfg.jobs} jobs x {cfg.processes} worker process(es), {command}) at "
                           f"{client.scheduler.address}{link}")
                except BaseException as exc:
                    if watch.reason:
                        raise RuntimeError(watch.reason) from exc
                    if isinstance(exc, CommClosedError):
                        raise RuntimeError("the SLURM workers were lost while computing (their jobs ended: "
                                           f"walltime, scancel or a lost node): {exc}; days already complete "
                                           "stay, run again to finish") from exc
                    raise
    finally:
        slurm.close()


def _wait_for_slurm_workers(client, slurm, expected: int, cfg: ClusterConfig) -> None:
    """Until ``expected`` workers joined; one clear error when ``cfg.start_timeout`` passes
    or when every job has ended without its worker (cancelled, failed, out of walltime)."""
    import subprocess  # noqa: PLC0415
    import time  # noqa: PLC0415

    where = cfg.log_directory or "the directory the run started in"
    deadline = time.monotonic() + cfg.start_timeout
    last_check = 0.0
    while True:
        joined = len(client.scheduler_info().get("workers", {}))
        if joined >= expected:
            return
        now = time.monotonic()
        if now >= deadline:
            raise RuntimeError(f"{joined} of {expected} SLURM workers joined within {cfg.start_timeout:g} s "
                               f"(squeue shows the jobs; their output is in {where})")
        if now - last_check >= 3.0:
            last_check = now
            ids = [str(job.job_id) for job in slurm.workers.values() if getattr(job, "job_id", None)]
            if ids:
                listed = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True,
                                        text=True)
                if listed.returncode == 0 and not listed.stdout.strip():
                    raise RuntimeError(f"the SLURM jobs ended before their workers joined ({joined} of {expected}"
                                       f" joined; their output is in {where})")
        time.sleep(0.5)


def connect_timeout_s() -> float:
    """How long a run tries to reach a scheduler given by address (seconds;
    GPU_RISK_CONNECT_TIMEOUT, default 30)."""
    return float(os.environ.get("GPU_RISK_CONNECT_TIMEOUT", "30"))


def no_worker_timeout_s() -> float:
    """How long a run waits for a scheduler with no worker before it fails (seconds;
    GPU_RISK_NO_WORKER_TIMEOUT, default 120)."""
    return float(os.environ.get("GPU_RISK_NO_WORKER_TIMEOUT", "120"))


class _Watch:
    reason: str | None = None


# Set by the command line (never by the library): a run that is still waiting 15 s after
# the watchdog closed its client exits with the reason rather than hang (its writes are
# atomic and its lock is released with the process, as when it is killed).
EXIT_WHEN_STUCK = {"on": False}


@contextlib.contextmanager
def _workers_watched(client, spec: str) -> Iterator[_Watch]:
    """Fail instead of waiting forever: when the scheduler has had no worker for
    ``no_worker_timeout_s()`` (none started, or every one gone), close the client, so
    that the computation waiting on it raises; the watch says why."""
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    watch, stop = _Watch(), threading.Event()
    limit = no_worker_timeout_s()

    def run() -> None:
        since = None
        while not stop.wait(min(2.0, limit / 4)):
            try:
                workers = len(client.scheduler_info().get("workers", {}))
            except Exception:  # the client is closing
                return
            if workers:
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= limit:
                watch.reason = (f"{spec if spec.startswith('the ') else 'the Dask scheduler at ' + spec} has had no "
                                f"worker for {limit:.0f} s (none started, or every one gone); start workers and run "
                                "again")
                closer = threading.Thread(target=client.close, daemon=True)
                closer.start()
                if EXIT_WHEN_STUCK["on"] and not stop.wait(15.0):
                    import sys  # noqa: PLC0415

                    sys.stderr.write(f"error: {watch.reason}\n")
                    sys.stderr.flush()
                    os._exit(2)
                return

    thread = threading.Thread(target=run, name="gpu-risk-worker-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()


def scheduler_threads(spec: str, memory_limit: str | None = None, dashboard: bool = False) -> int:
    """Threads that run tasks under the active scheduler ``spec`` (for the time breakdown)."""
    spec = resolve_scheduler(spec, memory_limit, dashboard)
    if spec == "sync":
        return 1
    if spec == "threads":
        return _local_workers()
    try:
        from distributed import default_client  # noqa: PLC0415

        workers = default_client().scheduler_info().get("workers", {})
        return max(1, sum(w.get("nthreads", 1) for w in workers.values()))
    except (ImportError, ValueError):
        return _local_workers()
