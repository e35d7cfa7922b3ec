"""The family registry: one record per result family, and everything that loops over them.

The workflow, its config, the fingerprints that decide what a re-run recomputes, and the
report are driven by this registry, as flox drives its reductions from one table of
``Aggregation`` records. Adding a family is a kernel module, an orchestration module and
one :func:`register_family` call: nothing in the workflow, the CLI or the report changes.
See docs/architecture.md for a worked example.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

INPUTS = ("book", "positions", "market", "market_history")


@dataclasses.dataclass
class DayContext:
    """What a family's ``compute`` gets for one as-of date.

    ``inputs``: the day's opened and validated inputs (``book`` a DataTree with one node
    per instrument that has the day, ``instruments``, ``book_days``, ``positions``,
    ``market``, ``market_history``), only those some requested family needs. ``results``: the results of the
    families computed before this one for the same day (computed, not lazy, when a later
    family ``uses`` them). ``settings``: this family's settings (its ``settings`` model)."""

    config: Any  # the WorkflowConfig
    date: str
    backend: str
    inputs: dict
    results: dict
    settings: BaseModel | None


@dataclasses.dataclass(frozen=True)
class Family:
    """One result family.

    name: its name in workflow files (``families: [name]``), in the results store (the
        group each day holds) and on the command line.
    needs: the input stores it reads, a subset of ("book", "positions", "market",
        "market_history").
    compute: ``compute(ctx: DayContext) -> xr.Dataset | dict[str, xr.Dataset]``: the day's
        results, lazily where its inputs are; a dict names several result groups.
    settings: a pydantic model of its settings (the workflow file's section named after
        the family), or None when it has none.
    chunks: Zarr chunk sizes by dimension for its result groups (one chunk by default).
    uses: families whose results it reads when they are requested too (their results are
        computed once, before it, and handed over in ``ctx.results``).
    report: ``report(results: xr.DataTree, days: list[str]) -> str``, an HTML section of
        the report over the complete days, or None.
    groups: the result groups it writes (default: its name).
    more_needs: ``more_needs(settings) -> tuple``: input stores it also reads under some of
        its settings (the stress family reads the book for its liquidity shortfall).
    """

    name: str
    needs: tuple[str, ...]
    compute: Callable[[DayContext], Any]
    settings: type[BaseModel] | None = None
    chunks: dict[str, int] = dataclasses.field(default_factory=dict)
    uses: tuple[str, ...] = ()
    report: Callable[[xr.DataTree, list[str]], str] | None = None
    groups: tuple[str, ...] = ()
    more_needs: Callable[[Any], tuple[str, ...]] | None = None

    def needs_with(self, settings) -> tuple[str, ...]:
        """The input stores it reads with these settings."""
        extra = self.more_needs(settings) if self.more_needs is not None else ()
        return self.needs + tuple(k for k in extra if k not in self.needs)

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"family name {self.name!r} must be an identifier")
        unknown = set(self.needs) - set(INPUTS)
        if unknown:
            raise ValueError(f"family {self.name!r} needs unknown inputs {sorted(unknown)} (known: {INPUTS})")
        if not self.groups:
            object.__setattr__(self, "groups", (self.name,))

    def default_settings(self) -> BaseModel | None:
        return self.settings() if self.settings is not None else None


_REGISTRY: dict[str, Family] = {}
_RESERVED: set[str] = set()  # workflow fields a family may not shadow (filled by workflow.py)


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Add ``family`` to the registry (returns it). A name already registered is refused
    unless ``replace``.

    >>> register_family(Family("toy", needs=("positions",), compute=toy_compute))  # doctest: +SKIP
    """
    _load_builtins()
    if family.name in _RESERVED:
        raise ValueError(f"family name {family.name!r} is a workflow setting")
    if family.name in _REGISTRY and not replace:
        raise ValueError(f"family {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a registered family (tests and plugins that swap one out)."""
    _REGISTRY.pop(name, None)


def families() -> dict[str, Family]:
    """Every registered family, by name, in registration order (the report's order)."""
    _load_builtins()
    return dict(_REGISTRY)


def get_family(name: str) -> Family:
    known = families()
    if name not in known:
        raise ValueError(f"unknown family {name!r} (available: {tuple(known)})")
    return known[name]


def load_plugins(modules: Iterable[str]) -> None:
    """Import the modules named (each registers its families when imported)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"plugin module {module!r} could not be imported: {exc}") from None


def compute_order(names: Iterable[str]) -> list[str]:
    """``names`` ordered so that every family comes after the requested families it uses."""
    requested = list(names)
    known = families()
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise ValueError(f"families use each other in a cycle: {' -> '.join((*path, name))}")
        for used in known[name].uses:
            if used in requested:
                visit(used, (*path, name))
        done.append(name)

    for name in requested:
        visit(name, ())
    return done


_BUILTINS_LOADED = False


def _load_builtins() -> None:
    """Register the built-in families, then those that installed packages declare under
    the ``gpu_risk.families`` entry-point group (each entry point is a module to import)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from . import builtin_families  # noqa: F401, PLC0415  (registers on import; they import families)

    for ep in entry_points(group="gpu_risk.families"):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not stop the built-in families
            log.warning("family plugin %s could not be loaded: %s", ep.name, exc)
