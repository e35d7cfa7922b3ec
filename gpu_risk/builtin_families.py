"""The five built-in families, registered in the order the report shows them."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from . import store
from .backend import to_backend
from .cascade import cascade
from .cluster import resolve_scheduler
from .depth import check_depth_extrapolation
from .families import DayContext, Family, register_family
from .imbalance import BOOK_ARRAYS, _imbalance_grid
from .imbalance_stored import stored_sources
from .liquidation import liquidation
from .stress import stress_surface
from .summary import book_summary, positions_summary
from .validate import without_flagged_rows


class StressConfig(BaseModel):
    """The scenario grid: price shocks x exactly one of vol_shocks or haircut_shocks."""

    model_config = ConfigDict(extra="forbid")
    price_shocks: list[float] = [round(x, 10) for x in np.linspace(-0.5, 0.5, 21)]
    vol_shocks: list[float] | None = [round(x, 10) for x in np.linspace(-0.2, 0.3, 11)]
    haircut_shocks: list[float] | None = None
    span_scan_range: float | dict[str, float] = 0.15
    span_vol_range: float = 0.10
    keep_account_surfaces: bool = False  # accounts x grid is large: by default keep the worst ratio
    # also value the closing of the accounts liquidated at the prices the day's last book
    # snapshot gives (liquidity_shortfall; needs the book store)
    liquidity_shortfall: bool = False

    @model_validator(mode="after")
    def _one_second_axis(self):
        if self.haircut_shocks is not None and "vol_shocks" not in self.model_fields_set:
            self.vol_shocks = None
        if (self.vol_shocks is None) == (self.haircut_shocks is None):
            raise ValueError("give exactly one of vol_shocks or haircut_shocks")
        return self


class ImbalanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bucket: str = "1s"
    levels: int | None = None
    bands_bps: list[float] = [5, 10, 25, 50, 100]
    max_carry: str | None = "5min"  # empty buckets carry the book this long (SPEC section 1)

    @field_validator("bucket", "max_carry")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and pd.Timedelta(value) < pd.Timedelta(0):
            raise ValueError(f"{value!r} is a negative duration")
        return value


class LeverageConfig(BaseModel):
    """Funding, open interest and basis per ``bucket`` (a duration that divides a day)."""

    model_config = ConfigDict(extra="forbid")
    bucket: str = "5min"

    @field_validator("bucket")
    @classmethod
    def _divides_a_day(cls, value: str) -> str:
        from .leverage import bucket_edges  # noqa: PLC0415

        bucket_edges("2000-01-01", value)
        return value


def day_leverage(ctx: DayContext) -> xr.Dataset:
    from .leverage import leverage_grid  # noqa: PLC0415

    c = ctx.settings
    assert isinstance(c, LeverageConfig)
    return leverage_grid(ctx.inputs["market_history"], ctx.date, c.bucket)


class CascadeConfig(BaseModel):
    """Cascades at every ``every`` of each day, for each initial shock."""

    model_config = ConfigDict(extra="forbid")
    every: str = "1min"
    initial_shocks: list[float] = [-0.2, -0.15, -0.1, -0.07, -0.05, -0.03, -0.02, -0.01,
                                   0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2]
    # the visible levels of a crypto book span basis points: without extrapolation every
    # cascade stops at the deepest level. 0.002: each further 0.2 % of price holds the
    # visible side's size again (see docs/methodology.md, "Liquidation cascades")
    # "power": the depth profile fitted on deep books (the market's depth_exponent)
    depth_extrapolation: float | Literal["power"] | None = 0.002

    _depth_model = field_validator("depth_extrapolation", mode="before")(check_depth_extrapolation)


class ContagionConfig(BaseModel):
    """Portfolio contagion at every ``every`` of each day, for each common shock."""

    model_config = ConfigDict(extra="forbid")
    every: str = "15min"
    initial_shocks: list[float] = [-0.2, -0.1, -0.05, -0.03, -0.01, 0.01, 0.03, 0.05, 0.1, 0.2]
    depth_extrapolation: float | Literal["power"] | None = 0.002  # as the cascade's
    pull: bool = False  # which instruments pull which (one more contagion per booked instrument)

    _depth_model = field_validator("depth_extrapolation", mode="before")(check_depth_extrapolation)


def _perpetuals(ctx: DayContext) -> xr.DataTree:
    """The day's books of the perpetuals (options have none)."""
    book, market = ctx.inputs["book"], ctx.inputs["market"]
    kinds = dict(zip(market["instrument"].values.astype(str), market["kind"].values.astype(str)))
    return xr.DataTree.from_dict({f"/{n}": book[n].to_dataset() for n in book.children
                                  if kinds.get(n) in ("linear", "inverse")})


def day_contagion(ctx: DayContext) -> xr.Dataset:
    """The day's contagion through every perpetual's book at once."""
    from .contagion import contagion  # noqa: PLC0415

    c = ctx.settings
    assert isinstance(c, ContagionConfig)
    return contagion(_perpetuals(ctx), ctx.inputs["positions"], ctx.inputs["market"], c.every, c.initial_shocks,
                     depth_extrapolation=c.depth_extrapolation, pull=c.pull, validate=False)


def day_summary(ctx: DayContext) -> dict[str, xr.Dataset]:
    return {"book_summary": book_summary(ctx.inputs["book"]),
            "positions_summary": positions_summary(ctx.inputs["positions"], ctx.inputs["market"])}


STORED_GRID_BYTES = 1 << 30  # the largest day grid (all instruments) computed in memory


def day_imbalance_grid(ctx: DayContext) -> xr.Dataset:
    """The day's grid, with the previous day's last snapshot as each instrument's OFI
    predecessor, so that day-by-day grids equal the grid of the whole history. On the
    local schedulers (CPU) a day stored in the book's own chunk format is computed from
    its chunk files on this process's threads, without a graph (the same grid)."""
    book, book_days, date = ctx.inputs["book"], ctx.inputs.get("book_days"), ctx.date
    book_store = ctx.config.stores.book
    c = ctx.settings
    assert isinstance(c, ImbalanceConfig)
    local = resolve_scheduler(ctx.config.scheduler, ctx.config.memory_limit, ctx.config.dashboard) in (
        "sync", "threads")
    day_books, prevs, stored = {}, {}, {}
    for inst in ctx.inputs["instruments"]:
        ds = day_books[inst] = without_flagged_rows(book[inst].to_dataset())
        days = book_days[inst] if book_days is not None else store.instrument_days(book_store, inst)
        earlier = [d for d in days if d < date]
        prev = prevs[inst] = store.last_valid_snapshot(book_store, inst, earlier[-1]) if earlier else None
        sources = stored_sources(ds) if local and ctx.backend == "cpu" else None
        if sources is not None:  # the lead-in row beside the day (concatenating copies the day's times)
            stored[inst] = sources, None if prev is None else (
                int(prev["time"].values.astype("datetime64[ns]").view(np.int64)[0]),
                [prev[n].values for n in BOOK_ARRAYS])
    # the stored path holds the day's grid in memory: a grid larger than that is left to the
    # graph, which writes it chunk by chunk
    grid_bytes = len(day_books) * 8 * (86_400 * 10**9 // pd.Timedelta(c.bucket).value + 1) * (
        2 * max(ds.sizes["level"] for ds in day_books.values()) + len(c.bands_bps) + 4)
    whole = bool(stored) and len(stored) == len(day_books) and grid_bytes <= STORED_GRID_BYTES
    nodes = {}
    for inst, ds in day_books.items():
        prev = prevs[inst]
        if prev is not None and not whole:  # the graph's lead-in row: concatenated to the day
            prev = to_backend(prev, ctx.backend)
            ds = xr.concat([prev, ds], "time", data_vars="minimal", coords="minimal",
                           compat="override", join="override").assign_attrs(ds.attrs)
        nodes[f"/{inst}"] = ds
    return _imbalance_grid(xr.DataTree.from_dict(nodes), c.bucket, c.levels, c.bands_bps, None, date,
                           np.datetime64(date) + np.timedelta64(1, "D"), False, c.max_carry,
                           stored=stored if whole else None)


def day_liquidation(ctx: DayContext) -> xr.Dataset:
    return liquidation(ctx.inputs["positions"], ctx.inputs["market"], validate=False)


def day_stress(ctx: DayContext) -> xr.Dataset:
    c = ctx.settings
    assert isinstance(c, StressConfig)
    surface = stress_surface(ctx.inputs["positions"], ctx.inputs["market"], c.price_shocks,
                             vol_shocks=c.vol_shocks, haircut_shocks=c.haircut_shocks,
                             span_scan_range=c.span_scan_range, span_vol_range=c.span_vol_range,
                             validate=False, book=_perpetuals(ctx) if c.liquidity_shortfall else None)
    if not c.keep_account_surfaces:
        surface = surface.drop_vars("collateral_ratio")
    return surface


def day_cascade(ctx: DayContext) -> xr.Dataset:
    """The day's cascades on every perpetual that has a book (options have none)."""
    book, market = ctx.inputs["book"], ctx.inputs["market"]
    kinds = dict(zip(market["instrument"].values.astype(str), market["kind"].values.astype(str)))
    names = [n for n in book.children if kinds.get(n) in ("linear", "inverse")]
    c = ctx.settings
    assert isinstance(c, CascadeConfig)
    return cascade(book, ctx.inputs["positions"], market, c.every, c.initial_shocks,
                   liquidation=ctx.results.get("liquidation"),
                   depth_extrapolation=c.depth_extrapolation, instruments=names, validate=False)


def _section(name: str):
    """A report section of gpu_risk.report, imported when the report is written (it needs
    matplotlib, which a batch without a report never loads)."""
    def section(results: xr.DataTree, days: list[str]) -> str:
        from . import report  # noqa: PLC0415

        return getattr(report, name)(results, days)

    section.__name__ = name
    return section


register_family(Family("summary", needs=("book", "positions", "market"), compute=day_summary,
                       groups=("book_summary", "positions_summary"), report=_section("summary_section")))
register_family(Family("imbalance", needs=("book",), compute=day_imbalance_grid, settings=ImbalanceConfig,
                       chunks={"instrument": 1, "time": 65_536}, report=_section("imbalance_section")))
register_family(Family("liquidation", needs=("positions", "market"), compute=day_liquidation,
                       chunks={"account": 262_144}, report=_section("liquidation_section")))
register_family(Family("stress", needs=("positions", "market"), compute=day_stress, settings=StressConfig,
                       chunks={"account": 262_144}, report=_section("stress_section"),
                       more_needs=lambda c: ("book",) if getattr(c, "liquidity_shortfall", False) else ()))
register_family(Family("cascade", needs=("book", "positions", "market"), compute=day_cascade,
                       settings=CascadeConfig, uses=("liquidation",),
                       chunks={"instrument": 1, "time": 4096}, report=_section("cascade_section")))
register_family(Family("contagion", needs=("book", "positions", "market"), compute=day_contagion,
                       settings=ContagionConfig, chunks={"instrument": 1}, report=_section("contagion_section")))
register_family(Family("leverage", needs=("market_history",), compute=day_leverage, settings=LeverageConfig,
                       chunks={"instrument": 1}, report=_section("leverage_section")))
