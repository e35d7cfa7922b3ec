"""The ``gpu-risk`` command line (typer + rich)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from enum import Enum, StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .builtin_families import CascadeConfig, ContagionConfig, ImbalanceConfig, StressConfig
from .errors import InputError, SchemaError

# plain help (not rich's boxes): readable at 80 columns, option names never cut
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings=CONTEXT)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"gpu-risk {version('gpu_risk')}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """gpu_risk: batch risk over order books and positions stored in Zarr.

    Every command: -h for its options; --json for a summary on stdout; --debug (anywhere) for
    tracebacks. Exit status: 0 done, 2 an error (one line on stderr), 3 a limit of the
    workflow breached (the run itself completed)."""


def _say(message: str) -> None:
    """A log line on stderr with the time of day."""
    import time

    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", soft_wrap=True)
REDO = typer.Option(None, "--redo", help="recompute these days even where current: DATE[,DATE...] or all")
PERF = typer.Option(None, "--performance-report",
                    help="also write Dask's HTML performance report here (scheduler local or ADDRESS)")

# options shared by the family commands
BOOK = typer.Option(None, help="book store")
POSITIONS = typer.Option(None, help="positions store")
MARKET = typer.Option(None, help="market store")
OUT = typer.Option(..., "--out", help="results store (days already complete are skipped)")
START = typer.Option(None, metavar="YYYY-MM-DD", help="first as-of date (default: the first day)")
END = typer.Option(None, metavar="YYYY-MM-DD", help="last as-of date (default: the last day)")
REPORT = typer.Option(None, help="also write the HTML report here")


class BackendChoice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class BadRows(StrEnum):
    raise_ = "raise"
    flag = "flag"


BACKEND = typer.Option(BackendChoice.auto, help="auto: CUDA kernels when a GPU is visible, numba otherwise")
SCHEDULER = typer.Option("auto", metavar="auto|sync|threads|local|slurm|ADDRESS",
                         help="where Dask runs (auto: threads; local under --memory-limit or --dashboard)")
MEMORY = typer.Option(None, help="per-worker memory limit, e.g. 4GB (starts a local cluster)")
BAD_ROWS = typer.Option(BadRows.raise_, help="raise: stop at the first bad row; flag: leave bad rows out, "
                        "flagged qc_*")
DASHBOARD = typer.Option(False, "--dashboard", help="serve Dask's dashboard on 127.0.0.1 (a local cluster)")
JSON = typer.Option(False, "--json", help="print a JSON summary on stdout")


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Importers stream files in blocks; glibc's per-thread malloc arenas (zarr's I/O and
    Dask's threads each get one) would otherwise keep freed blocks and grow the process
    with the file's size (measured: +100 MB per 55 MB of LOBSTER input; flat with two
    arenas). No effect off glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _progress() -> Progress:
    # transient: the bars go when the work ends, so that the log lines stay in order
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


_DEBUG = {"on": False}  # set by main(): --debug shows tracebacks


def _fail(exc: Exception) -> None:
    if _DEBUG["on"]:
        raise exc
    # errors contain [...] locations; soft_wrap: a store path is never broken across lines
    console.print(f"[red]error:[/red] {escape(_one_line(exc))}", soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="directory for book.zarr, positions.zarr, market.zarr"),
    days: int = typer.Option(3, help="number of UTC days"),
    instruments: int = typer.Option(4, help="number of perpetual instruments (book + positions)"),
    accounts: int = typer.Option(100_000, help="number of accounts"),
    levels: int = typer.Option(10, help="book levels per side"),
    snapshots_per_day: int = typer.Option(100_000, help="book snapshots per instrument and day"),
    start: str = typer.Option("2026-01-05", help="first day (YYYY-MM-DD)"),
    seed: int = typer.Option(42, help="random seed: same seed, same data"),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace a dataset in --out made with other settings (else refused)"),
    market_history: bool = typer.Option(False, "--market-history",
                                        help="also market_history.zarr (funding, open interest, mark, index)"),
    compression: str = typer.Option("lz4", help="the book's chunks: lz4 (compact) or none (read fastest from "
                                    "memory or a fast local disk)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
):
    """Write a seeded, realistic multi-day synthetic dataset of any size, in bounded memory."""
    from .synth import SynthConfig
    from .synth import synth as run_synth

    cfg = SynthConfig(out=str(out), days=days, instruments=instruments, accounts=accounts,
                      levels=levels, snapshots_per_day=snapshots_per_day, start=start, seed=seed,
                      overwrite=overwrite, market_history=market_history, compression=compression)
    try:
        with _progress() as bar:
            tasks = {"book": bar.add_task("book days", total=days * instruments),
                     "positions": bar.add_task("positions + market days", total=days)}
            summary = run_synth(cfg, progress=lambda task, n: bar.advance(tasks[task], n))
    except (InputError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(summary))
    else:
        console.print(f"wrote {summary['book']}, {summary['positions']}, {summary['market']}"
                      + (f", {summary['market_history']}" if summary["market_history"] else ""))


@app.command()
def run(
    workflow: Path = typer.Argument(..., exists=True, dir_okay=False, help="workflow YAML"),
    backend: BackendChoice | None = typer.Option(None, help="overrides the workflow's"),
    scheduler: str | None = typer.Option(None, metavar="auto|sync|threads|local|slurm|ADDRESS",
                                         help="where Dask runs (overrides)"),
    memory_limit: str | None = typer.Option(None, help="per-worker memory limit, e.g. 4GB"),
    output: Path | None = typer.Option(None, help="results store (overrides)"),
    report: Path | None = typer.Option(None, help="HTML report path (overrides)"),
    on_bad_rows: BadRows | None = typer.Option(None, help="overrides the workflow's"),
    book: Path | None = typer.Option(None, help="book store (overrides the workflow's)"),
    positions: Path | None = typer.Option(None, help="positions store (overrides)"),
    market: Path | None = typer.Option(None, help="market store or YAML/TOML file (overrides)"),
    market_history: Path | None = typer.Option(None, help="market history store (overrides)"),
    start: str | None = typer.Option(None, help="first as-of date (overrides)"),
    end: str | None = typer.Option(None, help="last as-of date (overrides)"),
    families: str | None = typer.Option(None, help="comma-separated families to run (overrides)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
    dashboard: bool = DASHBOARD,
    performance_report: Path | None = PERF,
    redo: str | None = REDO,
):
    """Run a batch workflow day by day; complete days are skipped on re-run. Any setting of
    the file can be overridden here (stores, dates, families, where and how to run)."""
    from pydantic import ValidationError

    from .workflow import load_config

    stores = {"book": book, "positions": positions, "market": market, "market_history": market_history}
    overrides = {"backend": backend.value if backend else None, "scheduler": scheduler,
                 "memory_limit": memory_limit, "dashboard": dashboard or None, "output": output, "report": report,
                 "on_bad_rows": on_bad_rows.value if on_bad_rows else None, "redo": _redo(redo),
                 "start": start, "end": end,
                 "families": [f.strip() for f in families.split(",") if f.strip()] if families else None,
                 "stores": stores if any(v is not None for v in stores.values()) else None}
    try:
        cfg = load_config(workflow, overrides)
    except ValidationError as exc:
        _fail(ValueError(_invalid(exc, f"invalid workflow {workflow}")))
    _run_config(cfg, as_json, performance_report)


def _invalid(exc, what: str) -> str:
    """A pydantic ValidationError in the user's terms: each setting, its value and what is
    wrong with it, on one line (no pydantic type names or links)."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(x) for x in err.get("loc", ()) if not str(x).startswith("function-"))
        message = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        value = err.get("input")
        shown = f" (got {value!r})" if where and isinstance(value, (str, int, float, bool)) else ""
        parts.append(f"{where}: {message}{shown}" if where else message)
    return f"{what}: " + "; ".join(parts)


def _run_config(cfg, as_json: bool, performance_report: Path | None = None) -> None:
    """Run a workflow config with progress on stderr (and a JSON summary on stdout)."""
    from .workflow import run_workflow

    with _progress() as bar:
        task = tasks = None

        def on_event(event: str, info: dict) -> None:
            nonlocal task, tasks
            if event == "backend":
                _say(f"backend: [bold]{info['backend']}[/bold] ({info['why']})")
            elif event == "scheduler":
                _say(f"scheduler: {escape(info['scheduler'])}")
            elif event == "compiling":
                _say("compiling the kernels (first run on this machine; cached afterwards)")
            elif event == "plan":
                if info["skipped"]:
                    _say(f"skipping {len(info['skipped'])} day(s) whose results are current: "
                         f"{', '.join(info['skipped'])}")
                for day, families in info.get("recompute", {}).items():
                    _say(f"{day}: computing {', '.join(families)}")
                task = bar.add_task("days", total=len(info["todo"]))
            elif event == "tasks":
                description = f"tasks of {info['date']}"
                if tasks is None:
                    tasks = bar.add_task(description, total=info["total"])
                bar.update(tasks, description=description, completed=info["done"], total=info["total"])
            elif event == "day":
                if task is not None:
                    bar.advance(task)
                if tasks is not None:
                    bar.remove_task(tasks)
                    tasks = None
                parts = info["stages"]["breakdown"]
                top = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:3])
                _say(f"{info['date']} done in {info['seconds']:.1f} s ({top})")
            elif event == "report":
                bar.stop()  # the report line comes last, after the bars
                _say(f"report: [bold]{escape(info['path'])}[/bold]")
            elif event == "study":
                bar.stop()
                _say(f"study: {info['instruments']} instrument(s) x {info['buckets']:,} buckets in "
                     f"{escape(info['dataset'])} ({info['seconds']:.1f} s)"
                     + (f"; report [bold]{escape(info['report'])}[/bold]" if info["report"] else ""))

        try:
            summary = run_workflow(cfg, on_event=on_event, performance_report=performance_report)
        except (InputError, ValueError, FileNotFoundError, RuntimeError) as exc:
            _fail(exc)
    if as_json:
        print(json.dumps(summary))
    _operator_lines(summary["summary"])


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _operator_lines(operator: dict) -> None:
    """The last day's headline and every limit breached, on stderr; exit 3 on a breach."""
    from .limits import EXIT_BREACH

    if operator.get("accounts_below_1") is not None:
        _say(f"{operator['date']}: {operator['accounts_below_1']:,} account(s) below collateral ratio 1, "
             f"{operator['accounts_below_watch']:,} below {operator['watch_ratio']:g}")
    for check in operator.get("limits", []):
        if check["status"] in ("red", "amber"):
            colour = "red" if check["status"] == "red" else "yellow"
            what = "limit breached" if check["status"] == "red" else "near its limit"
            _say(f"[{colour}]{what}[/{colour}]: {escape(check['limit'])} = {_figure(check['value'])} "
                 f"(max {_figure(check['max'])}, warn from {_figure(check['warn'])})")
    if operator.get("breached"):
        raise typer.Exit(EXIT_BREACH)


def _redo(text: str | None):
    """--redo: "all", or comma-separated dates."""
    if text is None:
        return None
    return "all" if text.strip() == "all" else [d.strip() for d in text.split(",") if d.strip()]


SHOCK_SYNTAX = ("comma-separated numbers or percentages (-0.2,0,0.2 or -20%,0,20%), or "
                "START:STOP:STEP (-0.5:0.5:0.05 or -50%:50%:5%), or START:STOP:COUNT with a "
                "whole COUNT (-0.5:0.5:21); ends included")


def _parsed(parse, text, option: str):
    """A command-line value parsed, or one line naming the option."""
    try:
        return parse(text, option)
    except ValueError as exc:
        _fail(exc)


def _number(text: str, option: str) -> float:
    text = text.strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a number or percentage") from None


def _floats(text: str | None, option: str = "the grid") -> list[float] | None:
    """A grid of moves (fractions): see SHOCK_SYNTAX."""
    import numpy as np

    if text is None:
        return None
    values: list[float] = []
    for item in (part for part in text.split(",") if part.strip()):
        if ":" not in item:
            values.append(_number(item, option))
            continue
        fields = item.split(":")
        if len(fields) != 3:
            raise ValueError(f"{option} {item!r}: a range is START:STOP:STEP or START:STOP:COUNT")
        start, stop = _number(fields[0], option), _number(fields[1], option)
        last = fields[2].strip()
        if last.isdigit():  # a whole number: how many values
            count = int(last)
            if count < 2:
                raise ValueError(f"{option} {item!r}: a COUNT must be at least 2")
            values += [round(float(x), 10) for x in np.linspace(start, stop, count)]
            continue
        step = _number(last, option)
        if step <= 0 or not np.isfinite(step):
            raise ValueError(f"{option} {item!r}: the STEP must be positive")
        count = round((stop - start) / step) + 1
        if count < 1 or abs(start + (count - 1) * step - stop) > 1e-9 * max(1.0, abs(stop)) or count > 100_000:
            raise ValueError(f"{option} {item!r}: STOP is not START plus a whole number of STEPs")
        values += [round(start + i * step, 10) for i in range(count)]
    if not values:
        raise ValueError(f"{option} {text!r}: no value")
    return values


def _shown(model, field: str) -> str:
    """A family setting's default as the command line writes it (ranges as START:STOP:STEP)."""
    import numpy as np

    value = model.model_fields[field].default
    if isinstance(value, list) and len(value) > 2:
        steps = np.diff(value)
        if np.allclose(steps, steps[0]):
            return f"{value[0]:g}:{value[-1]:g}:{steps[0]:.4g}"
    if isinstance(value, list):
        return ",".join(f"{v:g}" for v in value)
    return "none" if value is None else str(value)


def _depth_option(model, none_means: str):
    """``--depth-extrapolation`` of a family whose settings are ``model``."""
    return typer.Option(None, help="beyond the visible levels: a relative price distance per visible depth (flat), "
                                   f"power (the market's fitted depth_exponent), or none ({none_means})",
                        show_default=_shown(model, "depth_extrapolation"))


def _with_depth(settings: dict, depth_extrapolation: str | None) -> None:
    """The option into the family's settings: ``none`` is the setting None (kept, not the default)."""
    if depth_extrapolation is not None:
        settings["depth_extrapolation"] = None if depth_extrapolation.lower() == "none" else depth_extrapolation


def _family(family: str, settings: dict, *, book, positions, market, out, start, end, report, backend,
            scheduler, memory_limit, on_bad_rows, as_json, keep_none=(), performance_report=None,
            redo=None, plugins=None, dashboard=False) -> None:
    """One family as a one-family workflow: same stores, atomic day writes, resumable.
    Settings that are None are left at their defaults, except those in ``keep_none``."""
    from pydantic import ValidationError

    from .workflow import WorkflowConfig

    raw = {"name": family, "families": [family], "output": out, "report": report,
           "stores": {"book": book, "positions": positions, "market": market},
           "start": start, "end": end, "backend": backend, "scheduler": scheduler,
           "memory_limit": memory_limit, "on_bad_rows": on_bad_rows, "redo": _redo(redo),
           "plugins": plugins or None, "dashboard": dashboard or None}
    raw = {k: (v.value if isinstance(v, Enum) else v) for k, v in raw.items() if v is not None}
    settings = {k: v for k, v in settings.items() if v is not None or k in keep_none}
    if settings:
        raw[family] = settings
    try:
        cfg = WorkflowConfig.model_validate(raw)
    except ValidationError as exc:
        _fail(ValueError(_invalid(exc, "invalid options")))
    _run_config(cfg, as_json, performance_report)




@app.command()
def imbalance(
    book: Path = BOOK, out: Path = OUT, start: str | None = START, end: str | None = END,
    bucket: str | None = typer.Option(None, help="bucket length, e.g. 1s, 10s, 1min",
                                      show_default=_shown(ImbalanceConfig, "bucket")),
    levels: int | None = typer.Option(None, min=1, help="book levels used", show_default="all"),
    bands_bps: str | None = typer.Option(None, help="band half-widths in basis points, e.g. 5,10,25",
                                         show_default=_shown(ImbalanceConfig, "bands_bps")),
    max_carry: str | None = typer.Option(
        None, help="how long an empty bucket carries the book, e.g. 5min, or none (no limit)",
        show_default=_shown(ImbalanceConfig, "max_carry")),
    report: Path | None = REPORT, backend: BackendChoice = BACKEND, scheduler: str = SCHEDULER,
    memory_limit: str | None = MEMORY, on_bad_rows: BadRows = BAD_ROWS, as_json: bool = JSON,
    dashboard: bool = DASHBOARD,
    performance_report: Path | None = PERF,
    redo: str | None = REDO,
):
    """Imbalance grids (OFI, depth, band imbalance, microprice) per day into a results store."""
    settings = {"bucket": bucket, "levels": levels, "bands_bps": _parsed(_floats, bands_bps, "--bands-bps")}
    if max_carry is not None:
        settings["max_carry"] = None if max_carry.lower() == "none" else max_carry
    _family("imbalance", settings, keep_none=("max_carry",),
            book=book, positions=None, market=None, out=out, start=start, end=end, report=report,
            backend=backend, scheduler=scheduler, memory_limit=memory_limit, on_bad_rows=on_bad_rows,
            as_json=as_json, performance_report=performance_report, redo=redo, dashboard=dashboard)


@app.command()
def liquidation(
    positions: Path = POSITIONS, market: Path = MARKET, out: Path = OUT,
    start: str | None = START, end: str | None = END,
    report: Path | None = REPORT, backend: BackendChoice = BACKEND, scheduler: str = SCHEDULER,
    memory_limit: str | None = MEMORY, on_bad_rows: BadRows = BAD_ROWS, as_json: bool = JSON,
    dashboard: bool = DASHBOARD,
    performance_report: Path | None = PERF,
    redo: str | None = REDO,
):
    """Liquidation thresholds, map and open interest per as-of date into a results store."""
    _family("liquidation", {}, book=None, positions=positions, market=market, out=out, start=start,
            end=end, report=report, backend=backend, scheduler=scheduler, memory_limit=memory_limit,
            on_bad_rows=on_bad_rows, as_json=as_json, performance_report=performance_report, redo=redo,
            dashboard=dashboard)


@app.command()
def stress(
    positions: Path = POSITIONS, market: Path = MARKET, out: Path = OUT,
    start: str | None = START, end: str | None = END,
    price_shocks: str | None = typer.Option(None, help="relative price moves: " + SHOCK_SYNTAX,
                                            show_default=_shown(StressConfig, "price_shocks")),
    vol_shocks: str | None = typer.Option(None, help="absolute implied-vol changes (same syntax)",
                                          show_default=_shown(StressConfig, "vol_shocks")),
    haircut_shocks: str | None = typer.Option(None, help="haircuts added, instead of vol shocks (same syntax)"),
    keep_account_surfaces: bool = typer.Option(False, "--keep-account-surfaces",
                                               help="store every account's surface (large)"),
    book: Path | None = typer.Option(None, help="a book store: also price the shortfall by each day's last "
                                                "snapshot (liquidity_shortfall)"),
    report: Path | None = REPORT, backend: BackendChoice = BACKEND, scheduler: str = SCHEDULER,
    memory_limit: str | None = MEMORY, on_bad_rows: BadRows = BAD_ROWS, as_json: bool = JSON,
    dashboard: bool = DASHBOARD,
    performance_report: Path | None = PERF,
    redo: str | None = REDO,
):
    """Collateral-ratio stress surfaces, shortfall and SPAN per as-of date into a results store."""
    settings = {"price_shocks": _parsed(_floats, price_shocks, "--price-shocks"),
                "vol_shocks": _parsed(_floats, vol_shocks, "--vol-shocks"),
                "haircut_shocks": _parsed(_floats, haircut_shocks, "--haircut-shocks"),
                "keep_account_surfaces": keep_account_surfaces or None,
                "liquidity_shortfall": True if book is not None else None}
    _family("stress", settings, book=book, positions=positions, market=market, out=out, start=start,
            end=end, report=report, backend=backend, scheduler=scheduler, memory_limit=memory_limit,
            on_bad_rows=on_bad_rows, as_json=as_json, performance_report=performance_report, redo=redo,
            dashboard=dashboard)


@app.command()
def cascade(
    book: Path = BOOK, positions: Path = POSITIONS, market: Path = MARKET, out: Path = OUT,
    start: str | None = START, end: str | None = END,
    every: str | None = typer.Option(None, help="a cascade at every multiple of this, e.g. 1min",
                                     show_default=_shown(CascadeConfig, "every")),
    initial_shocks: str | None = typer.Option(None, help="initial price moves: " + SHOCK_SYNTAX,
                                              show_default=_shown(CascadeConfig, "initial_shocks")),
    depth_extrapolation: str | None = _depth_option(CascadeConfig, "stop there"),
    report: Path | None = REPORT, backend: BackendChoice = BACKEND, scheduler: str = SCHEDULER,
    memory_limit: str | None = MEMORY, on_bad_rows: BadRows = BAD_ROWS, as_json: bool = JSON,
    dashboard: bool = DASHBOARD,
    performance_report: Path | None = PERF,
    redo: str | None = REDO,
):
    """Liquidation cascades through the book per instrument x time x initial shock."""
    settings = {"every": every, "initial_shocks": _parsed(_floats, initial_shocks, "--initial-shocks")}
    _with_depth(settings, depth_extrapolation)
    _family("cascade", settings, keep_none=("depth_extrapolation",), book=book, positions=positions, market=market,
            out=out, start=start,
            end=end, report=report, backend=backend, scheduler=scheduler, memory_limit=memory_limit,
            on_bad_rows=on_bad_rows, as_json=as_json, performance_report=performance_report, redo=redo,
            dashboard=dashboard)


@app.command()
def contagion(
    book: Path = BOOK, positions: Path = POSITIONS, market: Path = MARKET, out: Path = OUT,
    start: str | None = START, end: str | None = END,
    every: str | None = typer.Option(None, help="a contagion at every multiple of this, e.g. 15min",
                                     show_default=_shown(ContagionConfig, "every")),
    initial_shocks: str | None = typer.Option(None, help="common price moves (x beta): " + SHOCK_SYNTAX,
                                              show_default=_shown(ContagionConfig, "initial_shocks")),
    depth_extrapolation: str | None = _depth_option(ContagionConfig, "the rest trades at the deepest level"),
    report: Path | None = REPORT, backend: BackendChoice = BACKEND, scheduler: str = SCHEDULER,
    memory_limit: str | None = MEMORY, on_bad_rows: BadRows = BAD_ROWS, as_json: bool = JSON,
    dashboard: bool = DASHBOARD,
    performance_report: Path | None = PERF,
    redo: str | None = REDO,
):
    """Portfolio contagion: liquidations across every book at once, per instrument x time x shock."""
    settings = {"every": every, "initial_shocks": _parsed(_floats, initial_shocks, "--initial-shocks")}
    _with_depth(settings, depth_extrapolation)
    _family("contagion", settings, keep_none=("depth_extrapolation",), book=book, positions=positions,
            market=market, out=out, start=start, end=end,
            report=report, backend=backend, scheduler=scheduler, memory_limit=memory_limit,
            on_bad_rows=on_bad_rows, as_json=as_json, performance_report=performance_report, redo=redo,
            dashboard=dashboard)


@app.command()
def compute(
    family: str = typer.Argument(..., help="a registered family (gpu_risk.families), built-in or from --plugin"),
    book: Path = BOOK, positions: Path = POSITIONS, market: Path = MARKET, out: Path = OUT,
    start: str | None = START, end: str | None = END,
    set_: list[str] | None = typer.Option(
        None, "--set", help="a setting of the family, KEY=VALUE (VALUE read as YAML: 0.5, [1, 2], none)"),
    plugin: list[str] | None = typer.Option(None, help="a module to import first (registers families)"),
    report: Path | None = REPORT, backend: BackendChoice = BACKEND, scheduler: str = SCHEDULER,
    memory_limit: str | None = MEMORY, on_bad_rows: BadRows = BAD_ROWS, as_json: bool = JSON,
    dashboard: bool = DASHBOARD,
    performance_report: Path | None = PERF,
    redo: str | None = REDO,
):
    """Any registered family (a plugin's too) per day into a results store; its settings by --set."""
    import yaml

    settings = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(ValueError(f"--set {item!r}: expected KEY=VALUE"))
        settings[key.strip()] = yaml.safe_load(value)
    _family(family, settings, keep_none=tuple(settings), book=book, positions=positions, market=market,
            out=out, start=start, end=end, report=report, backend=backend, scheduler=scheduler,
            memory_limit=memory_limit, on_bad_rows=on_bad_rows, as_json=as_json,
            performance_report=performance_report, redo=redo, plugins=plugin, dashboard=dashboard)


import_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=CONTEXT,
                         help="Import real order-book data into a book store.")
app.add_typer(import_app, name="import")


BOOK_COMPRESSION = typer.Option(
    None, help="the book store's chunks from now on: lz4 (compact; a new store's default) or none (read "
               "fastest from memory or a fast local disk; about 2.9x the disk)")


def _book_compression(out: Path, compression: str | None) -> None:
    """Record ``compression`` on the book store ``out`` (made if missing) before an import."""
    if compression is None:
        return
    from . import store

    try:
        store.ensure_store(out, "book")
        store.set_store_compression(out, compression)
    except (InputError, SchemaError, ValueError) as exc:
        _fail(exc)


@import_app.command("lobster")
def import_lobster_cmd(
    orderbook_csv: Path = typer.Argument(..., exists=True, dir_okay=False),
    message_csv: Path = typer.Argument(..., exists=True, dir_okay=False),
    date: str = typer.Option(..., help="trading day YYYY-MM-DD (times are New York local)"),
    instrument: str = typer.Option(..., help="instrument name in the store"),
    out: Path = typer.Option(..., help="book store to write or extend"),
    chunk_rows: int = typer.Option(262_144, min=1, help="rows read, spooled and stored per chunk (memory)"),
    compression: str | None = BOOK_COMPRESSION,
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
):
    """LOBSTER orderbook + message files (any level count) into a book store."""
    _limit_malloc_arenas()
    _book_compression(out, compression)
    from .importers.lobster import import_lobster

    try:
        summary = import_lobster(orderbook_csv, message_csv, date, instrument, out, chunk_rows=chunk_rows)
    except (InputError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(summary))
    elif summary["skipped"]:
        console.print(f"{escape(str(orderbook_csv))} and its message file are already in {escape(str(out))}: skipped")
    else:
        console.print(f"imported {summary['snapshots']:,} snapshots x {summary['levels']} levels "
                      f"of {instrument} on {date} into {out}")


@import_app.command("binance")
def import_binance_cmd(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False,
                                       help="recorded depth streams of one instrument, in order"),
    levels: int = typer.Option(..., help="levels per side to store"),
    out: Path = typer.Option(..., help="book store to write or extend"),
    instrument: str | None = typer.Option(None, help="name in the store (default: the symbol; "
                                             "spot gets a _SPOT suffix)"),
    compression: str | None = BOOK_COMPRESSION,
    as_json: bool = typer.Option(False, "--json", help="print the import report as JSON"),
):
    """Binance depth streams (REST snapshot + depthUpdate diffs) into a book store."""
    _limit_malloc_arenas()
    _book_compression(out, compression)
    from .importers.binance import import_binance

    try:
        summary = import_binance([str(f) for f in files], levels, out, instrument)
    except (InputError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(summary))
    else:
        for path in summary["skipped_files"]:
            console.print(f"{escape(path)} is already in {escape(str(out))}: skipped")
    if not as_json and len(summary["skipped_files"]) < len(files):
        console.print(f"{summary['instrument']} ({summary['market']}): {summary['snapshots']:,} snapshots "
                      f"over {', '.join(summary['days'])}; {summary['stale_diffs']} stale diffs; "
                      f"bookTicker agreement {summary['bookticker_agree']}/{summary['bookticker_compared']}")
    if summary["gaps"]:
        console.print(f"[yellow]{summary['gaps']} sequence gap(s); first at "
                      f"{escape(summary['first_gap'])}; no snapshot was written while the book was unknown[/yellow]")


@import_app.command("databento")
def import_databento_cmd(
    mbp10_csv: Path = typer.Argument(..., exists=True, dir_okay=False, help="Databento MBP-10 CSV"),
    out: Path = typer.Option(..., help="book store to write or extend"),
    on_bad_rows: BadRows = typer.Option(BadRows.raise_, help="flag: store fields that are not numbers as "
                                        "NaN (opening the store then flags those rows)"),
    compression: str | None = BOOK_COMPRESSION,
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
):
    """Databento MBP-10 CSV (ts_event as time, 10 levels; one instrument per symbol)."""
    _limit_malloc_arenas()
    _book_compression(out, compression)
    from .importers.databento import import_databento

    try:
        summary = import_databento(mbp10_csv, out, on_bad_rows=on_bad_rows.value)
    except (InputError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(summary))
    else:
        bad = summary.pop("bad_fields", [])
        skipped = summary.pop("skipped_files", [])
        for path in skipped:
            console.print(f"{escape(path)} is already in {escape(str(out))}: skipped")
        if not summary and not skipped:
            console.print(f"{escape(str(mbp10_csv))} holds no row: nothing imported")
        for symbol, info in summary.items():
            console.print(f"{symbol}: {info['snapshots']:,} snapshots over {', '.join(info['days'])}")
        if bad:
            console.print(f"[yellow]{len(bad)} field(s) not a number, stored as NaN; first: line "
                          f"{bad[0][0]}, column {bad[0][1]}, value {escape(repr(bad[0][2]))}[/yellow]")


@import_app.command("tardis")
def import_tardis_cmd(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False,
                                       help="Tardis CSV files (gzip or plain) of one layout, in time order"),
    out: Path = typer.Option(..., help="book store to write or extend (derivative_ticker: a market history store)"),
    levels: int | None = typer.Option(None, min=1, help="levels per side to store",
                                      show_default="N of book_snapshot_N; 25 for incremental_book_L2"),
    instrument: str | None = typer.Option(None, help="name in the store (files of one symbol)",
                                          show_default="the symbol"),
    as_json: bool = typer.Option(False, "--json", help="print the import report as JSON"),
):
    """Tardis.dev CSV: book_snapshot_N or incremental_book_L2 into a book store, derivative_ticker
    (funding, open interest, prices) into a market history store."""
    _limit_malloc_arenas()
    from .importers.tardis import import_tardis

    try:
        summary = import_tardis([str(f) for f in files], out, levels=levels, instrument=instrument)
    except (InputError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(summary))
        return
    for path in summary["skipped_files"]:
        console.print(f"{escape(path)} is already in {escape(str(out))}: skipped")
    for name, info in summary["instruments"].items():
        what = f"{info['snapshots']:,} snapshots" if "snapshots" in info else f"{info['updates']:,} updates"
        console.print(f"{escape(name)}: {what} over {', '.join(info['days'])}")
    if summary["resets"] or summary["rows_before_snapshot"]:
        console.print(f"[yellow]{summary['resets']} book reset(s) by a new snapshot; "
                      f"{summary['rows_before_snapshot']} update row(s) before the first snapshot skipped[/yellow]")


@app.command()
def report(
    results: Path = typer.Argument(..., help="results store written by `gpu-risk run`"),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write"),
    as_json: bool = typer.Option(False, "--json", help="print the operator summary (and limits) as JSON"),
):
    """Write the HTML report of a results store; the limits of the run that wrote it apply
    (exit status 3 when the last day breaches one)."""
    from .limits import operator_summary
    from .report import write_report

    if not results.is_dir():
        _fail(InputError("no results store here (run `gpu-risk run` first)", store=str(results)))
    try:
        operator = operator_summary(results)
        path = write_report(results, out, operator=operator)
    except (InputError, SchemaError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({"report": str(path), "summary": operator}))
    _say(f"report: {escape(str(path))}")
    _operator_lines(operator)


@app.command()
def validate(
    book: Path | None = typer.Option(None, help="book store"),
    positions: Path | None = typer.Option(None, help="positions store"),
    market: Path | None = typer.Option(None, help="market store or YAML/TOML file"),
    date: str | None = typer.Option(None, help="as-of date (positions/market; default latest)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
):
    """Check stores against the SPEC's schema and bad-input rules; exit 2 on the first problem."""
    from . import store

    if book is None and positions is None and market is None:
        _fail(ValueError("nothing to validate: name a store with --book, --positions or --market"))
    checked: dict = {}
    try:
        mkt = None
        if market is not None:
            mkt = store.open_market(market, date)
            checked["market"] = {"assets": mkt.sizes["asset"], "instruments": mkt.sizes["instrument"]}
        if positions is not None:
            pos = store.open_positions(positions, date, market=mkt, trust_recorded=False)
            checked["positions"] = {"accounts": pos.sizes["account"], "date": pos.attrs["date"]}
        if book is not None:
            tree = store.open_book(book, trust_recorded=False)  # every day read and checked
            checked["book"] = {name: tree[name].sizes["time"] for name in tree.children}
    except (InputError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(checked))
        return
    if "market" in checked:
        _say(f"[green]valid[/green] market {escape(str(market))}: {checked['market']['assets']} assets, "
             f"{checked['market']['instruments']} instruments")
    if "positions" in checked:
        _say(f"[green]valid[/green] positions {escape(str(positions))}: {checked['positions']['accounts']:,} "
             f"accounts on {checked['positions']['date']}")
    if "book" in checked:
        rows = ", ".join(f"{name} {n:,}" for name, n in checked["book"].items())
        _say(f"[green]valid[/green] book {escape(str(book))}: snapshots {rows}")


@app.command("fit-depth")
def fit_depth(
    book: Path = typer.Argument(..., exists=True, file_okay=False, help="a book store of deep books (many levels)"),
    visible_levels: int = typer.Option(10, help="levels the stores that will use the fit keep"),
    snapshots: int = typer.Option(500, help="snapshots per instrument, spread evenly"),
    as_json: bool = JSON,
):
    """Fit the power depth model (cumulative size ~ distance ** gamma beyond the visible
    levels) per instrument; put depth_exponent in the market data to use it."""
    from . import store
    from .depth import fit_depth_profile

    try:
        fit = fit_depth_profile(store.open_book(book), visible_levels=visible_levels, snapshots=snapshots)
    except (InputError, SchemaError, ValueError) as exc:
        _fail(exc)
    rows = [{"instrument": str(name), **{k: (float(fit[k].sel(instrument=name)) if fit[k].dtype.kind == "f"
                                             else int(fit[k].sel(instrument=name))) for k in fit.data_vars}}
            for name in fit.instrument.values]
    if as_json:
        print(json.dumps({"model": "power", "visible_levels": visible_levels, "instruments": rows}))
        return
    for row in rows:
        console.print(f"{row['instrument']}: depth_exponent {row['depth_exponent']:.3f} (bid "
                      f"{row['depth_exponent_bid']:.3f}, ask {row['depth_exponent_ask']:.3f}; quartiles "
                      f"{row['depth_exponent_q25']:.3f}-{row['depth_exponent_q75']:.3f}; {row['rows']} side-snapshots "
                      f"of {row['levels']} levels, deepest {100 * row['max_distance']:.2f} % from the mid)",
                      soft_wrap=True)
    console.print("market data: instruments: {NAME: {..., depth_exponent: GAMMA}}; then depth_extrapolation: power")


@app.command()
def verify(
    store_path: Path = typer.Argument(..., exists=True, file_okay=False,
                                      help="a book, positions, market or results store"),
    as_json: bool = JSON,
):
    """Check every complete day of a store: each chunk is there, whole, and reads back (its
    checksum); exit 2 with one line per damaged chunk."""
    from .stores.verify import verify_store

    try:
        found = verify_store(store_path)
    except (InputError, SchemaError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(found))
    for line in found["problems"]:
        console.print(f"[red]damaged:[/red] {escape(line)}", soft_wrap=True)
    if found["problems"]:
        raise typer.Exit(2)
    if not as_json:
        console.print(f"[green]intact[/green]: {found['kind']} store, {found['groups']} day group(s), "
                      f"{found['chunks']} chunk(s) read")


@app.command()
def migrate(
    book: Path = typer.Argument(..., exists=True, file_okay=False, help="book store (converted in place)"),
    layout: str = typer.Option("instrument-arrays", help="instrument-arrays (the only other layout)"),
    chunk_rows: int = typer.Option(262_144, help="rows per Zarr chunk of the new arrays"),
    as_json: bool = JSON,
):
    """Convert a book store of day groups to instrument arrays (one array per variable and
    instrument over all days): stores of many days open and read per byte, not per day."""
    from .stores.book_arrays import INSTRUMENT_ARRAYS, migrate_book
    from .stores.days import exclusive_writer

    if layout != INSTRUMENT_ARRAYS:
        _fail(ValueError(f"--layout {layout!r}: only {INSTRUMENT_ARRAYS!r} can be migrated to"))
    if chunk_rows < 1:
        _fail(ValueError(f"--chunk-rows {chunk_rows}: must be positive"))
    try:
        with exclusive_writer(book, "book"), _progress() as bar:
            task = bar.add_task("days", total=None)
            summary = migrate_book(book, chunk_rows=chunk_rows, progress=lambda inst, day: bar.advance(task))
    except (InputError, ValueError, RuntimeError, SchemaError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({"book": str(book), "layout": layout, "days": summary}))
    else:
        console.print(f"migrated {book}: " + ", ".join(f"{k} {v} day(s)" for k, v in summary.items()))


def _one_line(exc: BaseException | str, limit: int = 600) -> str:
    """An exception (or a message) as one line, long fields cut."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text):,} characters)"


def main() -> None:
    """The ``gpu-risk`` entry point: any failure ends in one line on stderr and exit status 2
    (a user's error names what and where; an unexpected one its type); ``--debug``
    anywhere on the command line, or GPU_RISK_DEBUG=1, shows the traceback instead."""
    logging.basicConfig(level=logging.WARNING)
    debug = "--debug" in sys.argv[1:] or os.environ.get("GPU_RISK_DEBUG") == "1"
    sys.argv = [a for a in sys.argv if a != "--debug"]
    _DEBUG["on"] = debug
    if not debug:  # Dask's and tornado's own log lines, one line each: no traceback on the way
        make_record = logging.getLogRecordFactory()

        def one_line_record(*args, **kwargs):
            record = make_record(*args, **kwargs)
            if record.name.startswith(("distributed", "tornado")):
                record.exc_info, record.exc_text, record.stack_info = None, None, None
            return record

        logging.setLogRecordFactory(one_line_record)
    from .cluster import EXIT_WHEN_STUCK

    EXIT_WHEN_STUCK["on"] = True
    try:
        # not standalone: usage errors come here, to be said in one line like the others
        code = app(standalone_mode=False, prog_name="gpu-risk")
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Abort:
        console.print("[red]interrupted[/red]")
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors (typer's copy of click)
        if debug:
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `gpu-risk` alone, `gpu-risk import`: the help
            with contextlib.suppress(BrokenPipeError):
                print(exc.format_message())
            sys.exit(0)
        names: list[str] = []
        ctx = getattr(exc, "ctx", None)
        while ctx is not None and ctx.parent is not None:  # the subcommands, not the program's name
            names.insert(0, ctx.info_name)
            ctx = ctx.parent
        command = " ".join(names)
        hint = f" (gpu-risk {command + ' ' if command else ''}-h lists the options)"
        message = _one_line(exc.format_message()).replace("Value error, ", "")
        console.print(f"[red]error:[/red] {escape(message)}{escape(hint)}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        known = isinstance(exc, (InputError, SchemaError, ValueError, OSError))
        kind = "" if known else f"{type(exc).__name__}: "
        console.print(f"[red]error:[/red] {kind}{escape(_one_line(exc))} (--debug shows the traceback)",
                      soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
