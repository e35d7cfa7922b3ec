"""The market history store: funding, open interest and prices per instrument over time.

``market_history.zarr/<instrument>/<YYYY-MM-DD>/`` holds, along ``time`` (the venue's
time of each update): ``funding_rate``, ``predicted_funding_rate`` [1 per funding
interval], ``funding_time`` (when the current funding applies), ``open_interest`` [venue
units], ``last_price``, ``index_price``, ``mark_price`` [quote currency]. A field the venue
did not send is NaN (NaT). Days are complete groups, written whole, like the book's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from .days import (
    PathLike,
    _open_root,
    check_manifest,
    child_groups,
    complete_days,
    init_store,
    is_sealed,
    open_day_dataset,
    write_day_dataset,
)

KIND = "market_history"
FIELDS = {  # name: (units, long_name)
    "funding_rate": ("1", "funding rate of the current interval"),
    "predicted_funding_rate": ("1", "predicted funding rate of the next interval"),
    "open_interest": ("venue units", "open interest"),
    "last_price": ("quote currency", "last traded price"),
    "index_price": ("quote currency", "index price"),
    "mark_price": ("quote currency", "mark price"),
}


def write_market_history_day(path: PathLike, instrument: str, day: str, time: np.ndarray,
                             values: dict[str, np.ndarray], funding_time: np.ndarray, attrs: dict) -> None:
    """One instrument's updates of one UTC day, as a complete group (atomic)."""
    init_store(path, KIND)
    ds = xr.Dataset({name: ("time", np.asarray(values[name], dtype=np.float64), {"units": u, "long_name": ln})
                     for name, (u, ln) in FIELDS.items()},
                    coords={"time": ("time", np.asarray(time, dtype="datetime64[ns]"),
                                     {"long_name": "time of the update (venue, UTC)"})})
    ds["funding_time"] = ("time", np.asarray(funding_time, dtype="datetime64[ns]"),
                          {"long_name": "time the current funding applies (UTC)"})
    ds.attrs.update(attrs, instrument=instrument, date=day)
    write_day_dataset(ds, path, f"{instrument}/{day}", {"time": 262_144})


def market_history_days(path: PathLike) -> dict[str, list[str]]:
    """Complete days per instrument."""
    if not Path(str(path)).exists():
        return {}
    _open_root(path, KIND)
    return {inst: complete_days(path, inst) for inst in child_groups(path)}


def open_market_history(path: PathLike, instruments=None, start: Any = None, end: Any = None) -> xr.DataTree:
    """The market history of ``instruments`` (all by default) over the complete days in
    [start, end], one DataTree node per instrument, lazily.

    Example::

        >>> history = gpu_risk.open_market_history("data/history.zarr", "BTCUSDT")   # doctest: +SKIP
        >>> history["BTCUSDT"].to_dataset().open_interest.resample(time="1h").last()  # doctest: +SKIP
    """
    _open_root(path, KIND)
    if isinstance(instruments, str):
        instruments = [instruments]
    names = list(instruments) if instruments is not None else child_groups(path)
    nodes = {}
    for inst in names:
        if inst not in child_groups(path):
            raise InputError("instrument not in the market history store", store=str(path), instrument=inst)
        days = complete_days(path, inst, start, end)
        if not days:
            raise InputError(f"no complete day in [{start}, {end}]", store=str(path), instrument=inst)
        parts = []
        for day in days:
            part = open_day_dataset(path, f"{inst}/{day}")
            if not is_sealed(path, f"{inst}/{day}", part.encoding):
                check_manifest(path, f"{inst}/{day}", part.encoding)
            parts.append(part)
        ds = parts[0] if len(parts) == 1 else xr.concat(parts, "time", data_vars="minimal", coords="minimal",
                                                         compat="override", join="exact")
        ds.attrs = {"instrument": inst, "days": days, "store": str(path)}
        nodes[f"/{inst}"] = ds
    tree = xr.DataTree.from_dict(nodes)
    tree.attrs = {"store": str(path)}
    return tree


def open_market_history_day(path: PathLike, instrument: str, day: str,
                            days: list[str] | None = None) -> tuple[xr.Dataset, dict[str, float] | None]:
    """One instrument's day (loaded; a damaged day is an error naming it) and the previous
    stored day's last values (:func:`gpu_risk.leverage.last_values`), or None without one.
    ``days``: the instrument's complete days, where already listed."""
    from ..leverage import last_values  # noqa: PLC0415

    days = complete_days(path, instrument) if days is None else days

    def load(key: str) -> xr.Dataset:
        part = open_day_dataset(path, f"{instrument}/{key}")
        if not is_sealed(path, f"{instrument}/{key}", part.encoding):
            check_manifest(path, f"{instrument}/{key}", part.encoding)
        return part.load()

    earlier = [d for d in days if d < day]
    return load(day), (last_values(load(earlier[-1])) if earlier else None)
