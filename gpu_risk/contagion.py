"""Portfolio contagion (SPEC section 5): liquidations that cross instruments, through every
instrument's book at once. The rules are in ``kernels/contagion.py`` and
docs/methodology.md ("Portfolio contagion"); this module selects each time's snapshots and
hands the kernel plain arrays.

Positions backed by CuPy run the CUDA kernel (``contagion_gpu``), one snapshot time after
another; otherwise the numba kernel runs the times side by side on the host's cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr

from .backend import is_cupy, to_host
from .cascade import _check_shocks, cascade_times
from .cluster import _local_workers
from .depth import POWER, depth_parameters, describe
from .errors import InputError
from .kernels import contagion as kernels
from .kernels.contagion import FIELDS
from .liquidation import market_arrays
from .model import in_market_order
from .schema import as_str
from .timing import in_context, timed_kernel, timed_task
from .validate import ensure_book, ensure_market, ensure_positions, without_flagged_rows

_contagion_cpu = timed_kernel("contagion", kernels.contagion_cpu)
_contagion_gpu = timed_kernel("contagion[gpu]", kernels.contagion_gpu)

BOOK = ("bid_price", "bid_size", "ask_price", "ask_size")


def reference_instruments(market: xr.Dataset, positions: xr.Dataset, booked: np.ndarray) -> np.ndarray:
    """For each asset, the booked perpetual on it with the most open interest (|q| x mark
    summed over accounts), whose book its price follows; -1 where none."""
    m = market_arrays(market)
    return _references(m, _open_interest(m, np.asarray(to_host(positions["position"].data), dtype=np.float64)),
                       booked)


def _open_interest(m, position: np.ndarray) -> np.ndarray:
    """Per instrument, |q| x mark summed over accounts (|q| for inverse contracts: USD)."""
    quantity = np.abs(position).sum(axis=0)
    return np.where(m.kind == 0, quantity * m.mark, quantity)


def _references(m, interest: np.ndarray, booked: np.ndarray) -> np.ndarray:
    """:func:`reference_instruments` from the market's arrays and the open interest."""
    out = np.full(m.price.size, -1, dtype=np.int64)
    for s in range(m.price.size):
        candidates = [i for i in range(m.kind.size) if booked[i] and m.underlying[i] == s and m.kind[i] != 2]
        if candidates:
            out[s] = max(candidates, key=lambda i: (interest[i], -i))
    return out


def contagion(book: xr.DataTree, positions: xr.Dataset, market: xr.Dataset, times,
              initial_shocks: Sequence[float], *, liquidation: xr.Dataset | None = None,
              depth_extrapolation: float | str | None = None, pull: bool = False,
              validate: bool = True) -> xr.Dataset:
    """Portfolio contagion per instrument x time x common shock (SPEC section 5).

    Parameters
    ----------
    book : DataTree with one node per perpetual (``open_book``); sizes in the positions'
        units (base units; USD contracts for inverse perpetuals).
    positions, market : as for :func:`gpu_risk.liquidation` (one as-of date).
    times : datetimes, or a frequency such as ``"1h"`` (as for :func:`gpu_risk.cascade`);
        at each time every book is its last snapshot at or before it.
    initial_shocks : common moves s0 (non-zero, > -1): every asset price moves by
        ``1 + beta s0``.
    liquidation : accepted as in :func:`gpu_risk.cascade` (SPEC's signature), and checked to
        be for the same accounts; contagion needs no liquidation price (each round
        evaluates every account's C and R at that round's prices), so nothing else is read.
    depth_extrapolation : where a book runs out: None (the rest trades at the deepest
        level), a flat step x > 0 or ``"power"`` (the market's fitted ``depth_exponent``),
        the models of :func:`gpu_risk.cascade`.
    pull : also ``pull`` (source, instrument, time, initial_shock) [1]: which instruments
        pull which. For each booked source j, the contagion runs again with j's book taken
        away (j's price then follows its underlying, moved by the others' books), and
        ``pull[j, i] = (final_price_i - final_price_i without j's book) / (mid_i s0)``: the
        part of i's amplification that j's book brings (NaN where either has no book). One
        more contagion per booked instrument.

    Returns a Dataset with dims (instrument, time, initial_shock): ``final_price`` [quote
    currency], ``liquidated_notional`` [USD], ``accounts_liquidated`` [1], ``rounds`` [1],
    ``book_exhausted`` [bool], ``amplification`` [1]; ``mid_price`` (instrument, time)
    [quote currency] (NaN where an instrument has no book at that time); and ``shortfall``
    (time, initial_shock) [USD].

    Example::

        >>> out = gpu_risk.contagion(book, positions, market, "1h", [-0.1, -0.05])  # doctest: +SKIP
        >>> out.final_price.sel(instrument="ETHUSDT", initial_shock=-0.1)            # doctest: +SKIP
    """
    if validate:
        market = ensure_market(market)
        positions = ensure_positions(positions, market)
    shocks = _check_shocks(initial_shocks)
    if liquidation is not None and not np.array_equal(np.asarray(liquidation["account"].values),
                                                      np.asarray(positions["account"].values)):
        raise InputError("liquidation result and positions have different accounts", variable="account")
    names = list(as_str(market["instrument"].values))
    kinds = dict(zip(names, as_str(market["kind"].values)))
    for name in book.children:
        if name not in kinds:
            raise InputError("book instrument not in the market", instrument=name, variable="instrument")
        if kinds[name] == "option":
            raise InputError("options have no book to walk", instrument=name)
    depth = depth_parameters(depth_extrapolation, market, list(book.children))
    depth_step = np.array([depth.get(name, (np.nan, np.nan))[0] for name in names])
    depth_exponent = np.array([depth.get(name, (np.nan, np.nan))[1] for name in names])
    books = {name: book[name].to_dataset() for name in book.children}
    if validate:
        books = {name: ensure_book(ds, instrument=name) for name, ds in books.items()}
    books = {name: without_flagged_rows(ds).load() for name, ds in books.items()}
    when = cascade_times(books, times)
    on_gpu = is_cupy(positions["position"].data)
    pos = in_market_order(positions, market).load()
    balance, position, entry, iso_margin = (np.ascontiguousarray(to_host(pos[v].data), np.float64)
                                            for v in ("balance", "position", "entry_price", "isolated_margin"))
    isolated = np.ascontiguousarray(np.asarray(pos["margin_mode"].values) == "isolated", np.bool_)
    m = market_arrays(market)
    interest = _open_interest(m, position)  # once: each time only changes which books there are
    if "qc_row_excluded" in pos:  # flagged accounts are left out: nothing to liquidate
        excluded = np.asarray(to_host(pos["qc_row_excluded"].data), bool)
        balance[excluded], position[excluded] = 0.0, 0.0
    levels = max(ds.sizes["level"] for ds in books.values()) if books else 1
    n_inst, n_time = len(names), when.size
    out = np.full((n_inst, n_time, shocks.size, len(FIELDS)), np.nan)
    shortfall = np.full((n_time, shocks.size), np.nan)
    mids = np.full((n_inst, n_time), np.nan)
    pulls = np.full((n_inst, n_inst, n_time, shocks.size) if pull else (0, 0, 0, 0), np.nan)
    def run(args: tuple) -> tuple[np.ndarray, np.ndarray]:
        """One time's kernel: (out (I, K, 5), shortfall (K,)) on the host."""
        if on_gpu:
            cp = kernels.cupy_module()
            block, lost = cp.empty((n_inst, shocks.size, len(FIELDS))), cp.empty(shocks.size)
            _contagion_gpu(*args, block, lost)
            return to_host(block), to_host(lost)
        block, lost = np.empty((n_inst, shocks.size, len(FIELDS))), np.empty(shocks.size)
        _contagion_cpu(*args, block, lost)
        return block, lost

    def one_time(t: int) -> None:
        with timed_task("other"):  # work on this call's own threads: counted in the caller's stage
            one_time_of(t)

    def one_time_of(t: int) -> None:
        arrays = [np.full((n_inst, levels), np.nan) for _ in BOOK]
        mid = np.full(n_inst, np.nan)
        booked = np.zeros(n_inst, dtype=np.bool_)
        for name, ds in books.items():
            i = names.index(name)
            stamps = ds["time"].values.astype("datetime64[ns]").view(np.int64)
            row = int(np.searchsorted(stamps, when[t].view(np.int64), side="right")) - 1
            if row < 0:
                continue
            snapshot = [np.asarray(to_host(ds[v].data[row]), dtype=np.float64) for v in BOOK]
            if not (np.isfinite(snapshot[0][0]) and np.isfinite(snapshot[2][0])):
                continue  # no two-sided quote: this book does not move this time
            for a, values in zip(arrays, snapshot):
                a[i, :values.size] = values
            mid[i] = 0.5 * (snapshot[0][0] + snapshot[2][0])
            booked[i] = True
        for a in (arrays[1], arrays[3]):
            np.nan_to_num(a, copy=False, nan=0.0)
        mids[:, t] = mid
        reference = _references(m, interest, booked)
        args = (*arrays, mid, booked, reference, depth_step, depth_exponent, shocks, balance, position, entry,
                iso_margin, isolated, m)
        block, shortfall[t] = run(args)
        out[:, t] = block
        if pull:
            for j in np.flatnonzero(booked):
                without = booked.copy()
                without[j] = False
                args_j = list(args)
                args_j[5], args_j[6] = without, _references(m, interest, without)
                other = run(tuple(args_j))[0]
                pulls[j, :, t] = np.where(without[:, None], (block[..., 0] - other[..., 0]) / (mid[:, None] * shocks),
                                          np.nan)

    # the CPU kernel releases the GIL: the times run side by side, one per core (the GPU
    # kernel's launches already fill the device: one time after another)
    workers = 1 if on_gpu else max(1, min(n_time, _local_workers()))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(in_context(one_time), range(n_time)))
    coords = {"instrument": names, "time": when, "initial_shock": shocks}
    dims = ("instrument", "time", "initial_shock")
    units = {"final_price": "quote currency", "liquidated_notional": "USD", "accounts_liquidated": "1",
             "rounds": "1", "book_exhausted": "1"}
    ds = xr.Dataset({name: (dims, out[..., j], {"units": units[name]}) for j, name in enumerate(FIELDS)},
                    coords=coords)
    ds["book_exhausted"] = ds["book_exhausted"] > 0
    ds["mid_price"] = (("instrument", "time"), mids,
                       {"units": "quote currency", "long_name": "mid of the snapshot used (unshocked; NaN: no book)"})
    ds["amplification"] = ((ds.final_price / ds.mid_price - 1) / ds.initial_shock).assign_attrs(
        units="1", long_name="(final_price / mid - 1) / initial_shock")
    if pull:
        ds["pull"] = (("source", "instrument", "time", "initial_shock"), pulls,
                      {"units": "1", "long_name": "part of the instrument's amplification that the source's book "
                                                  "brings (contagion with and without the source's book)"})
        ds = ds.assign_coords(source=("source", names))
    ds.attrs["depth_extrapolation"] = describe(depth_extrapolation)
    if describe(depth_extrapolation) == POWER:
        ds.attrs["depth_exponent"] = [float(g) for g in depth_exponent]
    ds["shortfall"] = (("time", "initial_shock"), shortfall,
                       {"units": "USD", "long_name": "bad debt of the liquidated accounts at the prices their "
                                                     "orders got"})
    return ds
