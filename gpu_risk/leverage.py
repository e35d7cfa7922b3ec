"""Leverage as history: funding, open interest and basis per instrument and time bucket,
from the market history store (``stores.market_history``).

Buckets are aligned to midnight UTC and labelled by their end, as the imbalance grid's:
the bucket labelled T covers T - bucket <= t < T. Per bucket, each field is its **last
value known at the bucket's end**: the venue's last update before T, carried forward
over buckets without one and from the previous stored day (funding and open interest are
states, not flows). A field the venue left empty in an update is not an update of it.

* ``funding_rate``, ``predicted_funding_rate`` [1 per funding interval];
* ``open_interest`` [venue units] and ``open_interest_change``: its change over the bucket
  (the first bucket of a day against the previous day's last value);
* ``mark_price``, ``index_price`` [quote currency] and ``basis`` = mark / index - 1 [1];
* ``n_updates``: the updates received in the bucket.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .errors import InputError

LEVEL_FIELDS = ("funding_rate", "predicted_funding_rate", "open_interest", "mark_price", "index_price")
ATTRS = {
    "funding_rate": ("1", "funding rate of the current interval, last known at the bucket's end"),
    "predicted_funding_rate": ("1", "predicted funding rate of the next interval, last known"),
    "open_interest": ("venue units", "open interest, last known at the bucket's end"),
    "open_interest_change": ("venue units", "change of open interest over the bucket"),
    "mark_price": ("quote currency", "mark price, last known at the bucket's end"),
    "index_price": ("quote currency", "index price, last known at the bucket's end"),
    "basis": ("1", "mark / index - 1 at the bucket's end"),
    "n_updates": ("1", "market history updates received in the bucket"),
}


def bucket_edges(day: str, bucket: str) -> np.ndarray:
    """The bucket starts of a UTC day (``bucket`` must divide the day), as datetime64[ns]."""
    width = pd.Timedelta(bucket)
    if width <= pd.Timedelta(0) or pd.Timedelta("1D") % width != pd.Timedelta(0):
        raise ValueError(f"bucket {bucket!r} must be a positive duration that divides a day")
    start = np.datetime64(day, "ns")
    return start + np.arange(pd.Timedelta("1D") // width) * np.timedelta64(width.value, "ns")


def last_values(day_ds: xr.Dataset) -> dict[str, float]:
    """Each level field's last non-NaN value of a day (NaN where the day has none): what
    the next day's first bucket starts from."""
    out = {}
    for name in LEVEL_FIELDS:
        values = np.asarray(day_ds[name].values, dtype=np.float64)
        finite = np.flatnonzero(np.isfinite(values))
        out[name] = float(values[finite[-1]]) if finite.size else np.nan
    return out


def leverage_day(day_ds: xr.Dataset, day: str, bucket: str = "5min", carry: dict[str, float] | None = None
                 ) -> xr.Dataset:
    """One instrument-day of the market history as buckets of ``bucket`` (dims ``time``,
    labelled by the bucket's end). ``carry``: the previous day's :func:`last_values` (None: NaN until
    the day's first update of each field).

    Example::

        >>> h = gpu_risk.open_market_history("history.zarr", "BTCUSDT")["BTCUSDT"].to_dataset()  # doctest: +SKIP
        >>> leverage_day(h.sel(time="2024-08-08"), "2024-08-08", "1h").basis.values             # doctest: +SKIP
    """
    edges = bucket_edges(day, bucket)
    width = np.timedelta64(pd.Timedelta(bucket).value, "ns")
    ends = edges + width
    times = np.asarray(day_ds["time"].values, dtype="datetime64[ns]")
    if times.size and (times.min() < edges[0] or times.max() >= ends[-1]):
        raise InputError(f"market history of {day} holds updates outside the day", variable="time",
                         label=day)
    if times.size > 1 and (np.diff(times.view(np.int64)) < 0).any():
        raise InputError(f"market history of {day} is not in time order", variable="time", label=day)
    carry = carry or {}
    out: dict[str, Any] = {}
    for name in LEVEL_FIELDS:
        values = np.asarray(day_ds[name].values, dtype=np.float64)
        infinite = np.isinf(values)
        if infinite.any():  # NaN is a field the venue did not send; infinity is bad input
            i = int(np.argmax(infinite))
            raise InputError(f"market history of {day}: {name} is {values[i]} at {times[i]}", variable=name,
                             index=i, label=day)
        known = np.isfinite(values)
        t, v = times[known], values[known]
        # the last update at or before each bucket's end (strictly before the next bucket)
        last = np.searchsorted(t, ends, side="left") - 1
        out[name] = np.where(last >= 0, v[np.clip(last, 0, None)] if v.size else np.nan,
                             carry.get(name, np.nan))
    before = carry.get("open_interest", np.nan)
    oi = out["open_interest"]
    out["open_interest_change"] = np.diff(oi, prepend=before)
    out["basis"] = out["mark_price"] / out["index_price"] - 1.0
    counts = np.searchsorted(times, ends, side="left") - np.searchsorted(times, edges, side="left")
    out["n_updates"] = counts.astype(np.float64)
    ds = xr.Dataset({name: ("time", np.asarray(values, dtype=np.float64),
                            {"units": ATTRS[name][0], "long_name": ATTRS[name][1]})
                     for name, values in out.items()},
                    coords={"time": ("time", ends, {"long_name": "bucket end (UTC): the bucket holds "
                                                                 "T - bucket <= t < T"})})
    ds.attrs["bucket"] = bucket
    return ds


def leverage_grid(days: dict[str, tuple[xr.Dataset, dict[str, float] | None]], day: str, bucket: str
                  ) -> xr.Dataset:
    """Instruments x buckets of one day: ``days`` maps each instrument to its day of market
    history and the previous day's carry."""
    parts = []
    for name, (ds, carry) in sorted(days.items()):
        try:
            parts.append(leverage_day(ds, day, bucket, carry).expand_dims(instrument=[name]))
        except InputError as exc:  # named with its instrument
            raise InputError(exc.problem, variable=exc.variable, instrument=name, index=exc.index,
                             label=exc.label) from exc
    if not parts:
        raise InputError(f"no instrument has market history on {day}", label=day)
    return xr.concat(parts, "instrument")
