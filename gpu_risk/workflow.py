"""The batch spine: a pydantic-validated workflow config run day by day.

For each as-of date: open that day's book, positions and market (validated), compute the
requested families, write them to the results store atomically (a day is visible only
when complete) and skip days already complete on a re-run. Then write the HTML report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import store
from .backend import choose_backend, to_backend
from .builtin_families import CascadeConfig, ImbalanceConfig, StressConfig  # noqa: F401  (re-exported)
from .cluster import ClusterConfig, dask_scheduler, resolve_scheduler, scheduler_threads
from .errors import InputError
from .families import _RESERVED, DayContext, compute_order, families, get_family, load_plugins
from .kernels._compile import cpu_cache_warm
from .limits import Limits, operator_summary, record_limits
from .study import StudyConfig
from .timing import Stages, TaskProgress, in_context
from .validate import QC_RULES_VERSION


class Stores(BaseModel):
    """The input stores; a family that needs one that is not given is refused."""

    model_config = ConfigDict(extra="forbid")
    book: Path | None = None
    positions: Path | None = None
    market: Path | None = None
    market_history: Path | None = None


class WorkflowConfig(BaseModel):
    """A batch job. Relative paths are resolved against the directory the job is run from."""

    model_config = ConfigDict(extra="forbid")
    name: str = "overnight"
    stores: Stores
    start: dt.date | None = Field(None, description="first as-of date (default: first book day)")
    end: dt.date | None = Field(None, description="last as-of date (default: last book day)")
    dates: list[dt.date] | None = Field(None, description="explicit as-of dates (instead of start/end)")
    families: list[str] = ["summary"]
    plugins: list[str] = Field([], description="modules to import first (they register more families)")
    settings: dict[str, Any] = Field(
        {}, description="each family's settings, by family; in a workflow file, a section named after the family")
    output: Path
    compression: Literal["lz4", "none"] | None = Field(
        None, description="the results' chunks: lz4 or none (default: a new results store takes the book "
                          "store's; an existing one keeps its own)")
    report: Path | None = None
    backend: Literal["auto", "cpu", "gpu"] = "auto"
    scheduler: str = "auto"
    cluster: ClusterConfig | None = Field(None, description="the jobs --scheduler slurm submits")
    memory_limit: str | None = None
    dashboard: bool = Field(False, description="serve Dask's dashboard on 127.0.0.1 (a local cluster)")
    limits: Limits | None = Field(None, description="limits on the last day's figures (gpu_risk.limits)")
    study: StudyConfig | None = Field(None, description="join the range's results into one study dataset "
                                                        "and report (gpu_risk.study)")
    on_bad_rows: Literal["raise", "flag"] = "raise"
    redo: list[dt.date] | Literal["all"] | None = Field(
        None, description="days to recompute even where their results are current (or all)")

    @model_validator(mode="before")
    @classmethod
    def _family_sections(cls, raw: Any) -> Any:
        """Plugins are imported first; a top-level section named after a registered family
        is that family's settings."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        load_plugins(raw.get("plugins") or [])
        known = families()
        settings = dict(raw.pop("settings", None) or {})
        settings.update({k: raw.pop(k) for k in list(raw) if k in known and k not in cls.model_fields})
        raw["settings"] = settings
        return raw

    @field_validator("families")
    @classmethod
    def _known_families(cls, names: list[str]) -> list[str]:
        for f in names:
            get_family(f)
        if not names:
            raise ValueError("at least one family")
        return names

    @model_validator(mode="after")
    def _family_settings(self):
        """Every requested family gets its settings model (defaults where not given)."""
        validated = {}
        for name in dict.fromkeys([*self.settings, *self.families]):
            family = get_family(name)
            given = self.settings.get(name)
            if family.settings is None:
                if given:
                    raise ValueError(f"family {name!r} takes no settings")
                continue
            validated[name] = given if isinstance(given, family.settings) else family.settings.model_validate(
                given or {})
        self.settings = validated
        return self

    def store_path(self, kind: str) -> Path:
        """The ``kind`` input store's path (the config refuses a family whose store is missing)."""
        path = getattr(self.stores, kind)
        if path is None:
            raise ValueError(f"no {kind} store given")
        return path

    def family_settings(self, name: str) -> BaseModel | None:
        """``name``'s settings (its model), or None for a family without settings."""
        found = self.settings.get(name)
        return found if found is not None else get_family(name).default_settings()

    @model_validator(mode="after")
    def _stores_for_families(self):
        for family in self.families:
            missing = [k for k in get_family(family).needs_with(self.family_settings(family))
                       if getattr(self.stores, k) is None]
            if missing:
                raise ValueError(f"family {family!r} needs the {' and '.join(missing)} store(s)")
        return self

    @model_validator(mode="after")
    def _dates_or_range(self):
        if self.dates is not None and (self.start is not None or self.end is not None):
            raise ValueError("give either dates or start/end, not both")
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


_RESERVED.update(WorkflowConfig.model_fields)


def load_config(path: str | Path, overrides: dict | None = None) -> WorkflowConfig:
    """Read a YAML workflow file; ``overrides`` (e.g. from CLI options) win; a ``stores``
    override replaces only the stores it names."""
    text = Path(path).read_text()
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a workflow file is a mapping of settings, not {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "stores" and isinstance(raw.get("stores"), dict):
            value = {**raw["stores"], **{k: v for k, v in value.items() if v is not None}}
        raw[key] = value
    return WorkflowConfig.model_validate(raw)


FINGERPRINT_VERSION = 1  # bump when a family's results change for the same inputs and settings


def _input_identity(cfg: WorkflowConfig, need: str, family: str, date: str,
                    book_days: dict[str, list[str]] | None, identity) -> dict:
    """What identifies the input ``need`` that ``family`` reads for ``date``; ``identity``:
    ``store.day_identity`` or a memo of it (families share their input days)."""
    if need == "book":
        ids = {}
        for inst, days in (book_days or {}).items():
            if date not in days:
                continue
            ids[inst] = identity(cfg.stores.book, f"{inst}/{date}")
            if family == "imbalance":  # the previous day's last snapshot is the OFI predecessor
                earlier = [d for d in days if d < date]
                if earlier:
                    ids[f"{inst} before"] = identity(cfg.stores.book, f"{inst}/{earlier[-1]}")
        return ids
    if need == "market_history":  # each instrument's day, and the day before (its carry)
        ids = {}
        history = cfg.store_path("market_history")
        for inst, days in store.market_history_days(history).items():
            if date in days:
                ids[inst] = identity(history, f"{inst}/{date}")
                earlier = [d for d in days if d < date]
                if earlier:
                    ids[f"{inst} before"] = identity(history, f"{inst}/{earlier[-1]}")
        return ids
    path = getattr(cfg.stores, need)
    if Path(path).is_file():  # a market YAML/TOML file: its content
        return {"file": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
    return {date: identity(path, date) if store.is_complete(path, date) else "absent"}


def family_fingerprint(cfg: WorkflowConfig, family: str, date: str,
                       book_days: dict[str, list[str]] | None, identity=store.day_identity) -> str:
    """A digest of what makes ``family``'s results for ``date``: its settings, the identity
    of every input day it reads (rewritten inputs get new identities), the bad-row policy
    and the validation rules. Results whose recorded fingerprint differs are recomputed."""
    settings = cfg.settings.get(family)
    payload = {
        "family": family, "version": FINGERPRINT_VERSION, "rules": QC_RULES_VERSION,
        "settings": settings.model_dump(mode="json") if isinstance(settings, BaseModel) else None,
        "on_bad_rows": cfg.on_bad_rows,
        "inputs": {need: _input_identity(cfg, need, family, date, book_days, identity)
                   for need in get_family(family).needs_with(cfg.family_settings(family))},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def stale_families(cfg: WorkflowConfig, date: str, book_days: dict[str, list[str]] | None,
                   identity=None) -> dict[str, str]:
    """The requested families whose results for ``date`` are missing, made from other
    settings or inputs, or asked to be redone: family -> its current fingerprint."""
    # each input day opened once, not once per family (and per run, where the plan shares one)
    identity = identity or functools.cache(store.day_identity)
    current = {f: family_fingerprint(cfg, f, date, book_days, identity) for f in cfg.families}
    redo = cfg.redo == "all" or (cfg.redo is not None and date in {store.day_key(d) for d in cfg.redo})
    recorded = store.results_fingerprints(cfg.output, date) if Path(cfg.output).exists() else {}
    return {f: fp for f, fp in current.items() if redo or recorded.get(f) != fp}


def as_of_dates(cfg: WorkflowConfig, book_days: dict[str, list[str]] | None = None) -> list[str]:
    """The dates to run: explicit, or every book day in [start, end] (all instruments).
    ``book_days``: the book store's complete days per instrument, where already listed."""
    if cfg.dates is not None:
        return sorted(store.day_key(d) for d in cfg.dates)
    if cfg.stores.book is not None:
        book = cfg.store_path("book")
        book_days = store.book_days(book) if book_days is None else book_days
        # a day whose every group is unfinished is a day too: its run names the damage
        days = sorted(set().union(*book_days.values(), *(
            store.unfinished_days(book, inst, complete=complete) for inst, complete in book_days.items())))
    elif cfg.stores.positions is not None:
        days = store.positions_dates(cfg.store_path("positions"))
    else:  # a study of the market history alone
        days = sorted(set().union(*store.market_history_days(cfg.store_path("market_history")).values()))
    return [d for d in days if (cfg.start is None or d >= store.day_key(cfg.start))
            and (cfg.end is None or d <= store.day_key(cfg.end))]


def open_day(cfg: WorkflowConfig, date: str, backend: str,
             book_days: dict[str, list[str]] | None = None) -> dict:
    """The day's inputs the families need, opened and validated once (lazily where large).
    ``book_days``: the book store's complete days per instrument, listed once per run (a
    store of years and many instruments would otherwise be listed again every day)."""
    needs = {k for f in cfg.families for k in get_family(f).needs_with(cfg.family_settings(f))}
    inputs: dict = {}
    if "positions" in needs:
        market = store.open_market(cfg.store_path("market"), date)
        positions = store.open_positions(cfg.store_path("positions"), date, market=market,
                                         on_bad_rows=cfg.on_bad_rows)
        inputs.update(market=market, positions=to_backend(positions, backend))
    if "book" in needs:
        book_days = store.book_days(cfg.store_path("book")) if book_days is None else book_days
        instruments = [i for i, days in book_days.items() if date in days]
        for inst in sorted(set(book_days) - set(instruments)):
            if store.unfinished_days(cfg.store_path("book"), inst, date, date, complete=book_days[inst]):
                # never a result silently without an instrument whose day is damaged
                raise InputError(f"book day {date} is present but not complete (a write that did not "
                                 "finish or is under way, or its zarr.json is lost): re-import it, or "
                                 "remove the group to leave the instrument out", store=str(cfg.stores.book),
                                 instrument=inst, label=f"{inst}/{date}")
        book = store.open_book(cfg.store_path("book"), instruments, start=date, end=date,
                               on_bad_rows=cfg.on_bad_rows)
        inputs.update(instruments=instruments, book_days=book_days,
                      book=book.map_over_datasets(lambda ds: to_backend(ds, backend)))
    if "market_history" in needs:
        path = cfg.store_path("market_history")
        held = store.market_history_days(path)
        inputs["market_history"] = {inst: store.open_market_history_day(path, inst, date, days)
                                    for inst, days in held.items() if date in days}
    return inputs


def compute_day(cfg: WorkflowConfig, date: str, backend: str, inputs: dict | None = None) -> dict:
    """Every requested family for one as-of date (lazy where the inputs are): result group
    name -> Dataset."""
    inputs = open_day(cfg, date, backend) if inputs is None else inputs
    order = compute_order(cfg.families)
    used = {u for name in order for u in get_family(name).uses if u in order}
    results: dict[str, xr.Dataset] = {}
    for name in order:
        family = get_family(name)
        ctx = DayContext(config=cfg, date=date, backend=backend, inputs=inputs, results=dict(results),
                         settings=cfg.family_settings(name))
        out = family.compute(ctx)
        out = {name: out} if isinstance(out, xr.Dataset) else dict(out)
        unknown = set(out) - set(family.groups)
        if unknown:
            raise ValueError(f"family {name!r} returned result groups {sorted(unknown)}, "
                             f"not among its groups {family.groups}")
        if name in used:
            # a later family reads these: computed once and kept (small beside the book)
            # rather than persisted, as persisted keys collide on a cluster with the same
            # keys in the day's later graph
            out = {k: v.compute() for k, v in out.items()}
        # what made them: every input is opened for the as-of date itself (never a later one)
        for ds in out.values():
            ds.attrs.update(date=date, workflow=cfg.name,
                            **{f"{need}_date": date for need in family.needs_with(cfg.family_settings(family.name))})
        results.update(out)
    return results


def result_chunks(names) -> dict[str, dict[str, int]]:
    """Zarr chunk sizes of each result group the families ``names`` write."""
    return {group: dict(f.chunks) for f in map(get_family, names) for group in f.groups if f.chunks}


def run_workflow(cfg: WorkflowConfig, *, on_event: Callable[[str, dict], None] | None = None,
                 performance_report: str | Path | None = None) -> dict:
    """Run the batch; returns a summary (days computed and skipped, timings, paths, and per
    day ``stages``: where the time went, see :class:`gpu_risk.timing.Stages`). ``seconds``:
    each day's wall time, from opening its inputs to its results being complete (on the
    local schedulers a day's writing overlaps the next day's reading, so these can add up
    to more than ``days_wall``, the wall time of all the days together).
    ``performance_report``: also write Dask's HTML performance report there (needs the
    ``local`` scheduler or a scheduler ADDRESS)."""
    # an impossible choice (the dashboard on threads) fails here, before anything runs
    where = resolve_scheduler(cfg.scheduler, cfg.memory_limit, cfg.dashboard)
    if performance_report is not None and where in ("sync", "threads"):
        raise ValueError("--performance-report needs a distributed scheduler (local or an ADDRESS), "
                         f"not {cfg.scheduler!r}")
    if performance_report is not None:
        import importlib.util  # noqa: PLC0415

        if importlib.util.find_spec("bokeh") is None:
            raise ValueError("--performance-report needs bokeh: pip install 'gpu_risk[cluster]'")
    emit = on_event or (lambda event, info: None)
    backend, why = choose_backend(cfg.backend)
    emit("backend", {"backend": backend, "why": why})
    # the book store's days, listed once for the whole run
    book_days = store.book_days(cfg.stores.book) if cfg.stores.book is not None else None
    dates = as_of_dates(cfg, book_days)
    if not dates:
        source = cfg.stores.book or cfg.stores.positions
        held = as_of_dates(cfg.model_copy(update={"start": None, "end": None, "dates": None}), book_days)
        what = f"it holds {held[0]} .. {held[-1]} ({len(held)} days)" if held else "it holds no complete day"
        asked = (f"the dates {', '.join(str(d) for d in cfg.dates)}" if cfg.dates is not None
                 else f"[{cfg.start or 'first'}, {cfg.end or 'last'}]")
        raise ValueError(f"no as-of date to run in {source} within {asked}: {what}")
    new = not Path(cfg.output).exists()  # (the writer's lock creates it)
    # one writer per results store: a second run on the same output is refused at once
    with store.exclusive_writer(cfg.output):
        _results_compression(cfg, new)
        return _run_locked(cfg, dates, book_days, backend, why, emit, performance_report)


def _results_compression(cfg: WorkflowConfig, new: bool) -> None:
    """Record how the results store compresses the days written to it: as configured, or
    for a ``new`` store as its book store does (a book kept uncompressed to be read fast is
    read by batches whose results are best written fast too)."""
    compression: str | None = cfg.compression
    if compression is None and new and cfg.stores.book is not None:
        compression = store.store_compression(cfg.stores.book)
    if compression is not None and compression != store.store_compression(cfg.output):
        store.set_store_compression(cfg.output, compression)


def _tasks_event(emit, date: str, done: int, total: int) -> None:
    emit("tasks", {"date": date, "done": done, "total": total})


def _run_locked(cfg: WorkflowConfig, dates, book_days, backend, why, emit, performance_report) -> dict:
    # a day is skipped only when every requested family's results are there and were made
    # from the same settings and input days (their fingerprints match)
    identity = functools.cache(store.day_identity)  # inputs do not change while planning
    stale = {d: stale_families(cfg, d, book_days, identity) for d in dates}
    todo = [d for d in dates if stale[d]]
    done = {d for d in dates if not stale[d]}
    emit("plan", {"dates": dates, "skipped": [d for d in dates if d in done], "todo": todo,
                  "recompute": {d: sorted(stale[d]) for d in todo}})
    timings: dict[str, float] = {}
    stages: dict[str, dict] = {}
    days_wall = 0.0
    if todo:
        with dask_scheduler(cfg.scheduler, backend=backend, memory_limit=cfg.memory_limit,
                            dashboard=cfg.dashboard, cluster=cfg.cluster) as where:
            emit("scheduler", {"scheduler": where})
            threads = scheduler_threads(cfg.scheduler, cfg.memory_limit, cfg.dashboard)
            if backend == "cpu" and not cpu_cache_warm():
                emit("compiling", {})
            report_ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
            if performance_report is not None:
                from distributed import performance_report as dask_performance_report  # noqa: PLC0415

                report_ctx = dask_performance_report(filename=str(performance_report))
            with report_ctx:
                t0 = time.perf_counter()
                _run_days(cfg, todo, stale, book_days, backend, threads, emit, timings, stages)
                days_wall = time.perf_counter() - t0
    # the limits go with the results (the report applies them), and are checked now
    if Path(cfg.output).exists():
        record_limits(cfg.output, cfg.limits)
    operator = operator_summary(cfg.output, cfg.limits or Limits())
    report = None
    if cfg.report is not None:
        from .report import write_report  # noqa: PLC0415  (matplotlib only when reporting)

        report = write_report(cfg.output, cfg.report, title=f"gpu_risk — {cfg.name}",
                              meta={"backend": f"{backend}: {why}", "scheduler": cfg.scheduler,
                                    "stores": {k: str(v) for k, v in cfg.stores.model_dump().items()}},
                              limits=cfg.limits, operator=operator)
        emit("report", {"path": str(report)})
    study = _write_study(cfg, dates, emit) if cfg.study is not None else None
    return {"workflow": cfg.name, "backend": backend, "dates": dates,
            "computed": list(timings), "skipped": [d for d in dates if d in done],
            "seconds": timings, "days_wall": days_wall, "stages": stages, "output": str(cfg.output),
            "report": str(report) if report else None, "summary": operator,
            "breached": operator["breached"], "study": study}


OPEN_AHEAD = True  # the local schedulers open the next day while this one is computed (_run_days)


def _in_memory(results: dict) -> bool:
    return all(isinstance(v.data, np.ndarray) for ds in results.values() for v in ds.variables.values())


def _run_days(cfg: WorkflowConfig, todo: list[str], stale: dict, book_days, backend: str, threads: int, emit,
              timings: dict, stages: dict) -> None:
    """Compute and write each day in turn. On the local schedulers a day whose results are
    all in memory is written on a background thread while the next day is opened and
    computed (its reading and planning leave a core idle); the next write waits for it,
    so days still complete in order, and a write that fails stops the run at that wait."""
    writer = ThreadPoolExecutor(1, thread_name_prefix="gpu_risk-results")
    pending: tuple | None = None  # (future of the write, date, started, clock)
    # on the local schedulers the next day's inputs are opened on a thread of their own while
    # this day is computed (opening is the driver's single-threaded work; the day's chunk
    # tasks wait on memory and release the GIL)
    opener = ThreadPoolExecutor(1, thread_name_prefix="gpu_risk-open")
    opened: dict[str, tuple] = {}  # date -> (future of its inputs, its clock, when it was started)

    def day_config(date: str) -> WorkflowConfig:
        return cfg.model_copy(update={"families": [f for f in cfg.families if f in stale[date]]})

    def open_ahead(date: str, clock: Stages) -> dict:
        with clock.background("open_validate"):
            return open_day(day_config(date), date, backend, book_days)

    def finish(date: str, started: float, clock: Stages) -> None:
        """Record a day whose results are complete."""
        timings[date] = time.perf_counter() - started  # overlaps the next day's reading when written behind
        stages[date] = clock.summary()
        store.record_run_stages(cfg.output, date, stages[date])
        emit("day", {"date": date, "seconds": timings[date], "stages": stages[date]})

    def write(date: str, families: list[str], results: dict, clock: Stages, background: bool) -> None:
        stage = clock.background if background else clock.stage
        with stage("compute_write"):
            store.write_results_day(cfg.output, date, results, result_chunks(families), fingerprints=stale[date])

    try:
        for i, date in enumerate(todo):
            ahead = opened.pop(date, None)
            # a day's time runs from the start of its opening (ahead: while the day before ran)
            t0 = time.perf_counter() if ahead is None else ahead[2]
            clock = Stages(threads) if ahead is None else ahead[1]
            day_cfg = day_config(date)
            # progress within the day (the local schedulers; a cluster has its dashboard)
            tasks: contextlib.AbstractContextManager = contextlib.nullcontext()
            if clock.local:
                tasks = TaskProgress(functools.partial(_tasks_event, emit, date))
            with tasks:
                if ahead is not None:  # opened while the day before was computed
                    inputs = ahead[0].result()
                else:
                    with clock.stage("open_validate"):
                        inputs = open_day(day_cfg, date, backend, book_days)
                if OPEN_AHEAD and clock.local and i + 1 < len(todo):
                    following = Stages(threads)
                    opened[todo[i + 1]] = (opener.submit(in_context(open_ahead), todo[i + 1], following),
                                           following, time.perf_counter())
                with clock.stage("graph"):
                    results = compute_day(day_cfg, date, backend, inputs)
                if pending is not None:
                    pending[0].result()
                    finish(*pending[1:])
                    pending = None
                if clock.local and _in_memory(results):  # written behind the next day
                    future = writer.submit(in_context(write), date, day_cfg.families, results, clock, True)
                    pending = (future, date, t0, clock)
                else:
                    write(date, day_cfg.families, results, clock, False)
                    finish(date, t0, clock)
        if pending is not None:
            pending[0].result()
            finish(*pending[1:])
            pending = None
    finally:
        if pending is not None:  # an error elsewhere: the day being written is completed first
            with contextlib.suppress(Exception):
                pending[0].result()
        writer.shutdown(wait=True)
        opener.shutdown(wait=True)  # a day opened ahead and not used (an error stopped the run)


def _write_study(cfg: WorkflowConfig, dates: list[str], emit) -> dict:
    """The study dataset of the run's dates (every one complete now) and its report."""
    from .study import build_study, study_report, write_study  # noqa: PLC0415

    assert cfg.study is not None
    t0 = time.perf_counter()
    ds = build_study(cfg.output, dates, cfg.study.bucket, cfg.study.fragility_shock)
    path = write_study(ds, cfg.study.output)
    seconds = time.perf_counter() - t0
    report = None
    if cfg.study.report is not None:
        report = study_report(ds, cfg.study.report, title=f"gpu_risk — {cfg.name}")
    info = {"dataset": str(path), "report": str(report) if report else None, "seconds": seconds,
            "instruments": ds.sizes.get("instrument", 0), "buckets": ds.sizes["time"]}
    emit("study", info)
    return info
