"""Liquidation cascades through the real book (SPEC section 4), lazily over Dask.

The positions side is a global reduction (every position of an instrument, sorted by
liquidation price), so it is computed once, eagerly, into small tables: per instrument and
side, the sorted trigger keys with running sums of quantity and notional. The book side
stays lazy: for each requested time the last snapshot at or before it is gathered, and the
kernel (``kernels/cascade.py``) runs on blocks of times x all shocks. See
docs/methodology.md, "Liquidation cascades", for the model and its choices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from .backend import dispatch, is_cupy, to_host
from .depth import POWER, check_depth_extrapolation, depth_parameters, describe
from .errors import InputError
from .kernels.cascade import FIELDS, cascade_cpu, cascade_gpu
from .model import notional_at_price
from .schema import as_str
from .validate import ensure_book, ensure_market, ensure_positions, without_flagged_rows

_kernel = dispatch(cascade_cpu, cascade_gpu)
BOOK_ARRAYS = ("bid_price", "bid_size", "ask_price", "ask_size")
TIME_BLOCK = 4096  # times per kernel call (x every shock)


def position_tables(quantity: np.ndarray, liquidation_price: np.ndarray, notional: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's tables for one instrument: (long, short), each (3, n + 1).

    Row 0 holds the trigger keys in ascending order (``-liquidation_price`` for longs,
    ``+liquidation_price`` for shorts; the last column is padding), rows 1 and 2 the running
    sums of |quantity| and notional in that order, starting at 0. Positions without a
    finite liquidation price are never triggered and are left out.
    """
    tables = []
    for sign, held in ((-1.0, quantity > 0), (1.0, quantity < 0)):
        keep = held & np.isfinite(liquidation_price)
        keys = sign * liquidation_price[keep]
        order = np.argsort(keys, kind="stable")
        table = np.zeros((3, keys.size + 1))
        table[0, :-1] = keys[order]
        table[0, -1] = np.inf
        table[1, 1:] = np.cumsum(np.abs(quantity[keep])[order])
        table[2, 1:] = np.cumsum(notional[keep][order])
        tables.append(table)
    return tables[0], tables[1]


def _block(bid_price, bid_size, ask_price, ask_size, long_table, short_table, *, shocks, extrapolation, exponent):
    """One block of times: (T, S, 4) packed results on the host."""
    n_times = bid_price.shape[0]
    gpu = is_cupy(bid_price)
    if gpu:
        import cupy as xp  # noqa: PLC0415
    else:
        xp = np
        bid_price, bid_size, ask_price, ask_size = (np.ascontiguousarray(a, dtype=np.float64) for a in (
            bid_price, bid_size, ask_price, ask_size))
    out = xp.empty((n_times, shocks.size, len(FIELDS)))
    long_table, short_table = np.asarray(long_table), np.asarray(short_table)
    _kernel(bid_price, bid_size, ask_price, ask_size, shocks,
            np.ascontiguousarray(long_table[0, :-1]), np.ascontiguousarray(long_table[1]),
            np.ascontiguousarray(long_table[2]), np.ascontiguousarray(short_table[0, :-1]),
            np.ascontiguousarray(short_table[1]), np.ascontiguousarray(short_table[2]),
            extrapolation, exponent, out)
    return out.get() if gpu else out  # results are small next to the book: back to the host


def cascade_times(books: dict[str, xr.Dataset], times) -> np.ndarray:
    """The evaluation times: explicit datetimes, or a frequency (e.g. ``"1min"``) meaning
    every multiple of it (from midnight UTC) between the first and last snapshot."""
    if isinstance(times, (str, pd.Timedelta, np.timedelta64)):
        step = pd.Timedelta(times).value
        if step <= 0:
            raise ValueError(f"times frequency must be positive, not {times!r}")
        stamps = [ds["time"].values.astype("datetime64[ns]").view(np.int64) for ds in books.values()]
        stamps = [t for t in stamps if t.size]
        if not stamps:
            raise ValueError("the book has no snapshot")
        first, last = min(t[0] for t in stamps), max(t[-1] for t in stamps)
        start = -(-first // step) * step  # first multiple of the step at or after the first snapshot
        return np.arange(start, last + 1, step, dtype=np.int64).astype("datetime64[ns]")
    index = pd.DatetimeIndex(pd.to_datetime(np.atleast_1d(times)))
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    out = index.values.astype("datetime64[ns]")
    if out.size == 0:
        raise ValueError("no time given")
    if np.isnat(out).any() or (np.diff(out.view(np.int64)) <= 0).any():
        raise ValueError("times must be increasing and not NaT")
    return out


def _check_shocks(initial_shocks) -> np.ndarray:
    shocks = np.atleast_1d(np.asarray(initial_shocks, dtype=np.float64))
    if shocks.ndim != 1 or shocks.size == 0:
        raise ValueError("initial_shocks must be a non-empty 1-d sequence")
    bad = ~np.isfinite(shocks) | (shocks == 0) | (shocks <= -1)
    if bad.any():
        raise ValueError(f"initial shocks must be finite, non-zero and > -1; got {shocks[bad][0]!r} "
                         f"at index {int(np.flatnonzero(bad)[0])}")
    if np.unique(shocks).size != shocks.size:
        raise ValueError("initial shocks must be distinct")
    return shocks


def cascade(book: xr.DataTree | xr.Dataset, positions: xr.Dataset, market: xr.Dataset, times,
            initial_shocks: Sequence[float], *, liquidation: xr.Dataset | None = None,
            depth_extrapolation: float | str | None = None, instruments: Iterable[str] | None = None,
            time_block: int = TIME_BLOCK, validate: bool = True, allow_lookahead: bool = False) -> xr.Dataset:
    """Liquidation cascades per instrument x time x initial shock (SPEC section 4).

    Parameters
    ----------
    book : DataTree with one node per instrument (``open_book``) or one instrument's
        Dataset (its ``instrument`` attribute names it). NumPy-, Dask- or CuPy-backed;
        rows flagged ``qc_row_excluded`` are left out. Book sizes must be in the units of
        the positions (base units; USD contracts for inverse perpetuals).
    positions, market : as for :func:`gpu_risk.liquidation` (one as-of date).
    times : datetimes, or a frequency string such as ``"1min"`` (every multiple of it,
        from midnight UTC, between the book's first and last snapshot). At each time the
        book is its last snapshot at or before that time.
    initial_shocks : relative moves s0 (non-zero, > -1): s0 < 0 sells longs into the bid
        side, s0 > 0 buys shorts from the ask side.
    liquidation : a computed :func:`gpu_risk.liquidation` result to reuse (its
        ``liquidation_price``); computed here otherwise.
    depth_extrapolation : None (SPEC: the cascade stops at the deepest level when the book
        is exhausted); a relative price distance x > 0 (flat: beyond the deepest level,
        every further x times the moved mid holds as much size as the whole visible side);
        or ``"power"`` (cumulative size ~ distance from the mid ** gamma through the deepest
        visible level, gamma from the market's ``depth_exponent``, see
        :func:`gpu_risk.fit_depth_profile`).
    instruments : subset of the book's instruments (default: all; each must be a
        perpetual in the market).
    allow_lookahead : positions or a market dated after the last evaluation time's day
        are refused (a cascade would use positions from its future) unless True.

    Returns a Dataset with dims (instrument, time, initial_shock): ``final_price`` [quote
    currency], ``liquidated_notional`` [USD], ``rounds`` [1], ``amplification`` [1],
    ``book_exhausted`` [bool]; and on (instrument, time) ``mid_price``, ``snapshot_time``
    and ``qc_no_quote`` (no snapshot at or before the time, or no two-sided quote: results
    NaN). Lazy (Dask) where the book is lazy; the positions side is computed eagerly.
    """
    if validate:
        market = ensure_market(market)
        positions = ensure_positions(positions, market)
    shocks = _check_shocks(initial_shocks)
    check_depth_extrapolation(depth_extrapolation)
    if isinstance(book, xr.Dataset):
        book = xr.DataTree.from_dict({f"/{book.attrs.get('instrument', 'book')}": book})
    names = sorted(instruments if instruments is not None else book.children)
    if not names:
        raise ValueError("the book has no instrument")
    market_instruments = list(as_str(market["instrument"].values))
    kinds = dict(zip(market_instruments, as_str(market["kind"].values)))
    for name in names:
        if name not in kinds:
            raise InputError("book instrument not in the market", instrument=name, variable="instrument")
        if kinds[name] == "option":
            raise InputError("cascades walk a perpetual's book; options have none", instrument=name)
    books = {name: book[name].to_dataset() for name in names}
    if validate:
        books = {name: ensure_book(ds, instrument=name) for name, ds in books.items()}
    books = {name: without_flagged_rows(ds) for name, ds in books.items()}
    depth = depth_parameters(depth_extrapolation, market, names)
    when = cascade_times(books, times)
    dates = dates_used(when, positions, market, allow_lookahead=allow_lookahead)

    if liquidation is None:
        from .liquidation import liquidation as compute_liquidation  # noqa: PLC0415

        liquidation = compute_liquidation(positions, market, validate=False)
    pos = positions["position"].reindex(instrument=market["instrument"].values, fill_value=0.0)
    lp = liquidation["liquidation_price"].reindex(instrument=market["instrument"].values)
    if lp.sizes["account"] != pos.sizes["account"] or not np.array_equal(
            np.asarray(lp["account"].values), np.asarray(pos["account"].values)):
        raise InputError("liquidation result and positions have different accounts", variable="account")
    both = xr.Dataset({"quantity": pos, "liquidation_price": lp}).compute()
    quantity, liq_price = (np.asarray(to_host(both[v].data), dtype=np.float64)
                           for v in ("quantity", "liquidation_price"))
    notional = notional_at_price(quantity, liq_price, market)

    lazy = any(isinstance(ds["bid_price"].data, da.Array) for ds in books.values())
    packed, mids, snap_times, no_snapshot = [], [], [], []
    for name in names:
        ds = books[name]
        i = market_instruments.index(name)
        t = ds["time"].values.astype("datetime64[ns]").view(np.int64)
        row = np.searchsorted(t, when.view(np.int64), side="right") - 1
        found = row >= 0
        row = np.maximum(row, 0)
        if t.size == 0:  # a node without snapshots: a one-row NaN book stands in
            ds = _empty_snapshot(ds)
        arrays = []
        for var in BOOK_ARRAYS:
            a = ds[var].data
            a = a if isinstance(a, da.Array) else da.from_array(a, chunks=a.shape)
            arrays.append(a[row].rechunk((time_block, -1)))
        long_table, short_table = position_tables(quantity[:, i], liq_price[:, i], notional[:, i])
        tables = [da.from_array(tb, chunks=tb.shape) for tb in (long_table, short_table)]
        out = da.blockwise(_block, "tsf", arrays[0], "tl", arrays[1], "tl", arrays[2], "tl", arrays[3], "tl",
                           tables[0], "ab", tables[1], "cd", shocks=shocks, extrapolation=depth[name][0],
                           exponent=depth[name][1],
                           new_axes={"s": shocks.size, "f": len(FIELDS)}, concatenate=True,
                           dtype=np.float64, meta=np.empty((0, 0, 0)))
        packed.append(out)
        mid = 0.5 * (arrays[0][:, 0] + arrays[2][:, 0])
        mids.append(mid.map_blocks(to_host, dtype=np.float64, meta=np.empty(0)) if is_cupy(mid) else mid)
        snap_times.append(np.where(found, t[row] if t.size else 0, np.iinfo(np.int64).min).astype("datetime64[ns]"))
        no_snapshot.append(~found)
    packed = da.stack(packed, axis=0)
    dims = ("instrument", "time", "initial_shock")
    coords = {"instrument": np.array(names, dtype=str), "time": when, "initial_shock": shocks}
    missing = xr.DataArray(np.stack(no_snapshot), dims=dims[:2])
    mid = xr.DataArray(da.stack(mids, axis=0), dims=dims[:2]).where(~missing)
    qc = missing | ~np.isfinite(mid)

    def field(name):
        return xr.DataArray(packed[..., FIELDS.index(name)], dims=dims).where(~qc)

    final_price = field("final_price")
    shock = xr.DataArray(shocks, dims="initial_shock")
    out = xr.Dataset(
        {
            "final_price": final_price.assign_attrs(units="quote currency",
                                                    long_name="price at the cascade's fixed point"),
            "liquidated_notional": field("liquidated_notional").assign_attrs(
                units="USD", long_name="sum of |q| x liquidation price over the positions closed"),
            "rounds": field("rounds").fillna(0).astype(np.int32).assign_attrs(
                units="1", long_name="liquidation waves until the fixed point"),
            "amplification": ((final_price / mid - 1) / shock).assign_attrs(
                units="1", long_name="(final_price / mid - 1) / initial_shock"),
            "book_exhausted": (field("book_exhausted").fillna(0) > 0).assign_attrs(
                long_name="the forced trades went through every visible level"),
            "mid_price": mid.assign_attrs(units="quote currency", long_name="mid of the snapshot used (unshocked)"),
            "snapshot_time": xr.DataArray(np.stack(snap_times), dims=dims[:2], attrs={
                "long_name": "time of the book snapshot used (last at or before the time)"}),
            "qc_no_quote": qc.assign_attrs(long_name="no snapshot at or before the time, or no two-sided quote"),
        },
        coords=coords,
    )
    out["initial_shock"].attrs.update(units="1", long_name="initial relative move s0 of every book price")
    out["time"].attrs["long_name"] = "evaluation time (UTC)"
    out.attrs["depth_extrapolation"] = describe(depth_extrapolation)
    if describe(depth_extrapolation) == POWER:
        out.attrs["depth_exponent"] = [depth[name][1] for name in names]
    out.attrs.update(dates)
    return out if lazy else out.compute()


def dates_used(when: np.ndarray, positions: xr.Dataset, market: xr.Dataset, *,
               allow_lookahead: bool = False) -> dict[str, str]:
    """The dates a cascade combines (recorded on its result): the evaluation times' first
    and last day and the positions' and market's as-of dates. Positions or a market dated
    after the last evaluation day are an error unless ``allow_lookahead``."""
    first, last = (str(np.datetime64(when[i], "D")) for i in (0, -1))
    used = {"times_first_day": first, "times_last_day": last}
    for what, ds in (("positions", positions), ("market", market)):
        date = ds.attrs.get("date")
        if date is None:
            continue
        key = str(np.datetime64(pd.Timestamp(date).tz_localize(None), "D"))
        used[f"{what}_date"] = key
        if key > last and not allow_lookahead:
            raise InputError(f"the {what} are as of {key}, after the last cascade time's day {last}: the "
                             f"cascade would use {what} from its future; open them for {last} (e.g. "
                             f"open_{what}(..., date={last!r})) or pass allow_lookahead=True",
                             variable="date")
    return used


def _empty_snapshot(ds: xr.Dataset) -> xr.Dataset:
    levels = ds.sizes["level"]
    nan = np.full((1, levels), np.nan)
    return xr.Dataset({v: (("time", "level"), nan if "price" in v else np.zeros((1, levels))) for v in BOOK_ARRAYS})
