"""The datasets' summary: what the overnight report shows before the risk families.

Per instrument and day: snapshot count, time span, open/high/low/close of the mid and the
mean spread; per as-of date: account counts and long/short open interest. Computed on
Dask over the chunks with the open-interest kernel dispatched on the chunk type.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .backend import dispatch, is_cupy, on_host, to_host
from .kernels.positions import open_interest_cpu, open_interest_gpu
from .model import unit_notional

_open_interest = dispatch(open_interest_cpu, open_interest_gpu)


def _oi_block(position, exclude, unit):
    xp = np
    if is_cupy(position):
        import cupy as xp  # noqa: PLC0415
    out = xp.empty((2, position.shape[1]), dtype=xp.float64)
    if not is_cupy(position):
        position = np.ascontiguousarray(position, dtype=np.float64)
    return _open_interest(position, xp.asarray(unit, dtype=xp.float64),
                          xp.asarray(exclude[:, 0], dtype=bool), out)


def open_interest(positions: xr.Dataset, market: xr.Dataset) -> xr.Dataset:
    """Long and short open interest (USD notional) per instrument and their imbalance
    (L - S)/(L + S), lazily; accounts flagged by ``qc_row_excluded`` are left out."""
    position = positions["position"].transpose("account", "instrument")
    unit = unit_notional(market).reindex(instrument=position["instrument"]).values
    exclude = positions.get("qc_row_excluded")
    exclude = (exclude.data if exclude is not None
               else da.zeros(position.sizes["account"], dtype=bool,
                             chunks=position.chunks[0] if position.chunks else -1))
    pos = position.data if isinstance(position.data, da.Array) else da.from_array(position.data)
    pos = pos.rechunk({1: -1})
    exclude = da.asarray(exclude).rechunk((pos.chunks[0],))
    n_blocks = pos.numblocks[0]
    parts = da.map_blocks(_oi_block, pos, exclude[:, None], unit=unit, dtype=np.float64,
                          chunks=((2,) * n_blocks, (pos.shape[1],)), meta=pos._meta)
    totals = parts.reshape((n_blocks, 2, pos.shape[1])).sum(axis=0)
    coords = {"instrument": position["instrument"].values}
    long_oi = xr.DataArray(totals[0], dims="instrument", coords=coords,
                           attrs={"units": "USD", "long_name": "long open interest (notional)"})
    short_oi = xr.DataArray(totals[1], dims="instrument", coords=coords,
                            attrs={"units": "USD", "long_name": "short open interest (notional)"})
    total = long_oi + short_oi
    imbalance = ((long_oi - short_oi) / total.where(total > 0)).assign_attrs(  # NaN, not 0/0
        units="1", long_name="leverage imbalance (L - S)/(L + S)")
    return xr.Dataset({"long_open_interest": long_oi, "short_open_interest": short_oi,
                       "oi_imbalance": imbalance})


_BOOK_SUMMARY_ATTRS = {
    "n_snapshots": ("1", "snapshots in the day (qc-excluded rows left out)"),
    "first_time": (None, "time of the first snapshot"),
    "last_time": (None, "time of the last snapshot"),
    "open_mid": ("quote currency", "mid price at the first snapshot"),
    "high_mid": ("quote currency", "highest mid price"),
    "low_mid": ("quote currency", "lowest mid price"),
    "close_mid": ("quote currency", "mid price at the last snapshot"),
    "mean_spread_bps": ("bps", "mean level-1 spread relative to the mid"),
}


def book_summary(book: xr.DataTree) -> xr.Dataset:
    """Per instrument: snapshots, first/last time, mid open/high/low/close, mean spread (bps).
    Snapshots flagged by ``qc_row_excluded`` are left out."""
    names = sorted(book.children)
    lazy, mids = {}, {}
    for name in names:
        ds = book[name].to_dataset()
        bid = ds["bid_price"].isel(level=0, drop=True).data
        ask = ds["ask_price"].isel(level=0, drop=True).data
        mid = (bid + ask) / 2
        valid = da.isfinite(mid) if isinstance(mid, da.Array) else np.isfinite(mid)
        if "qc_row_excluded" in ds:
            valid = valid & ~ds["qc_row_excluded"].data
        spread_bps = (ask - bid) / mid * 1e4
        n = mid.shape[0]
        mids[name] = mid
        lazy[name] = {
            "n_snapshots": valid.sum(),
            "first_index": valid.argmax(),
            "last_index": n - 1 - valid[::-1].argmax(),
            "high_mid": da.where(valid, mid, -np.inf).max(),
            "low_mid": da.where(valid, mid, np.inf).min(),
            "mean_spread_bps": da.where(valid, spread_bps, 0).sum() / valid.sum(),
        }
        lazy[name]["first_time"] = ds["time"].values[0]
        lazy[name]["last_time"] = ds["time"].values[-1]
    (computed,) = dask.compute(lazy)
    for name in names:  # the open and close read one chunk each
        c = computed[name]
        c["open_mid"], c["close_mid"] = dask.compute(mids[name][int(c["first_index"])],
                                                      mids[name][int(c["last_index"])])
        if int(c["n_snapshots"]) == 0:
            for key in ("open_mid", "close_mid", "high_mid", "low_mid", "mean_spread_bps"):
                c[key] = np.nan
    out = xr.Dataset(coords={"instrument": np.array(names, dtype=str)})
    for key, (units, long_name) in _BOOK_SUMMARY_ATTRS.items():
        values = np.array([to_host(computed[n][key]).item() for n in names])
        if key.endswith("_time"):
            values = values.astype("datetime64[ns]")
        attrs = {"long_name": long_name} | ({"units": units} if units else {})
        out[key] = xr.DataArray(values, dims="instrument", attrs=attrs)
    return out


def positions_summary(positions: xr.Dataset, market: xr.Dataset) -> xr.Dataset:
    """Account counts and open interest by instrument (computed)."""
    oi = open_interest(positions, market)
    mode = positions["margin_mode"]
    counts = {
        "n_accounts": (positions.sizes["account"], "accounts in the store"),
        "n_isolated": ((mode == "isolated").sum().data, "accounts in isolated margin mode"),
        "n_borrowing": ((positions["balance"] < 0).any("asset").sum().data,
                        "accounts with a borrowed (negative) balance"),
        "n_excluded": ((positions["qc_row_excluded"].sum().data if "qc_row_excluded" in positions
                        else 0), "accounts left out by the qc flags"),
    }
    # concentration: the largest single account's notional in each instrument
    position = on_host(positions["position"]).transpose("account", "instrument")
    held = abs(position) * unit_notional(market).reindex(instrument=position["instrument"])
    if "qc_row_excluded" in positions:
        held = held.where(~on_host(positions["qc_row_excluded"]), 0.0)
    largest = held.max("account") if positions.sizes["account"] else xr.zeros_like(held.sum("account"))
    computed = dask.compute({k: v for k, (v, _) in counts.items()}, oi, largest)
    values, oi, largest = computed
    out = oi.copy()
    out["largest_account_notional"] = largest.assign_attrs(
        units="USD", long_name="the largest single account's notional in the instrument")
    for key, (_, long_name) in counts.items():
        out[key] = xr.DataArray(int(to_host(values[key]).item()),
                                attrs={"units": "1", "long_name": long_name})
    return out.map(lambda v: v.copy(data=to_host(v.data)))
