"""Collateral-ratio stress surfaces (SPEC section 3), lazily over account chunks."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .backend import dispatch, empty_like_backend, is_cupy, to_host
from .cluster import _local_workers
from .errors import InputError
from .kernels.stress import span_cpu, stress_cpu, stress_gpu
from .liquidation import check_capacities, market_arrays
from .model import in_market_order
from .timing import in_context, timed_kernel, timed_task
from .validate import ensure_market, ensure_positions, without_flagged_rows

stress_kernel = dispatch(stress_cpu, stress_gpu)
span_kernel = timed_kernel("span", span_cpu)  # SPAN has no CUDA twin: GPU chunks come to the host

AGGREGATE_CHUNK = 32_768  # accounts per aggregate task: small inputs, many tasks for the cores
# on the GPU a task's fixed costs (launch, allocations, reductions, copies back) dominate below
# a few 100k accounts, and one device runs the tasks in turn anyway
GPU_AGGREGATE_CHUNK = 262_144


def _host_inputs(balance, position, entry, iso_margin, isolated, exclude):
    f64 = lambda x: np.ascontiguousarray(x, np.float64)  # noqa: E731
    return (f64(balance), f64(position), f64(entry), f64(iso_margin),
            np.ascontiguousarray(np.asarray(isolated).ravel(), np.bool_),
            np.ascontiguousarray(np.asarray(exclude).ravel(), np.bool_))


def _run(inputs, m, price_shocks, second, is_vol, keep_surface):
    """The kernel on one account chunk, on the backend its arrays are on: host (totals
    (S, K, 2), worst (A,), surface (A, S, K) or None)."""
    if not is_cupy(inputs[0]):
        inputs = _host_inputs(*inputs)
    first, n_acc = inputs[0], inputs[0].shape[0]
    totals = empty_like_backend(first, (price_shocks.size, second.size, 2))
    totals[...] = 0.0
    worst = empty_like_backend(first, (n_acc,))
    surface = empty_like_backend(first, (n_acc, price_shocks.size, second.size) if keep_surface else (0, 0, 0))
    stress_kernel(*inputs, m, price_shocks, second, is_vol, surface, totals, worst)
    return to_host(totals), to_host(worst), to_host(surface) if keep_surface else None


def _aggregate_block(*inputs, m, price_shocks, second, is_vol):
    totals, worst, _ = _run(inputs, m, price_shocks, second, is_vol, False)
    return totals, worst


def _surface_block(balance, position, entry, iso_margin, isolated, exclude, *, m, price_shocks, second, is_vol):
    return _run((balance, position, entry, iso_margin, isolated, exclude), m, price_shocks, second, is_vol,
                True)[2]


def _span_block(position, entry, exclude, m, scan, vol_scan, multiple, cover):
    # SPAN (16 scenarios, tabulated per price move) has no CUDA kernel: GPU chunks come back
    position, entry, exclude = to_host(position), to_host(entry), to_host(exclude)
    out = np.empty(position.shape[0])
    span_kernel(np.ascontiguousarray(position, np.float64), np.ascontiguousarray(entry, np.float64),
                m, scan, vol_scan, multiple, cover, out)
    out[np.asarray(exclude, dtype=bool).ravel()] = np.nan
    return out


def _per_instrument(value, market: xr.Dataset, name: str) -> np.ndarray:
    """A scalar, or a mapping instrument -> value (every instrument of the market)."""
    names = [str(i) for i in market["instrument"].values]
    if isinstance(value, dict):
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"{name} lacks instruments {missing}")
        out = np.array([float(value[n]) for n in names])
    else:
        out = np.full(len(names), float(value))
    if not (np.isfinite(out).all() and (out >= 0).all()):
        raise ValueError(f"{name} must be finite and >= 0")
    return out


def stress_surface(positions: xr.Dataset, market: xr.Dataset, price_shocks: Sequence[float], *,
                   vol_shocks: Sequence[float] | None = None, haircut_shocks: Sequence[float] | None = None,
                   span_scan_range: float | dict = 0.15, span_vol_range: float | dict = 0.10,
                   span_extreme_multiple: float = 2.0, span_cover: float = 0.35,
                   as_of=None, validate: bool = True, aggregate_chunk: int | None = None,
                   book: xr.DataTree | None = None) -> xr.Dataset:
    """Every account's collateral ratio over price shocks x (vol or haircut) shocks.

    Parameters
    ----------
    price_shocks : common moves s; every asset price becomes p (1 + beta s) and each mark
        moves with its underlying [1].
    vol_shocks : absolute changes of implied vol (options only) [1/sqrt(year)]; or
    haircut_shocks : added to the haircut of every asset with beta != 0, capped at 1 [1].

    span_scan_range, span_vol_range : SPAN price scan range (fraction of the price) and
        vol scan range (absolute vol), a scalar or a mapping instrument -> value.
    span_extreme_multiple, span_cover : the extreme scenarios move 2 scan ranges and count
        35 % of their loss (CME's defaults).
    aggregate_chunk : accounts per task for the aggregates and SPAN (results do not depend
        on it); default 32,768 on the CPU, 262,144 where the positions are on the GPU.
    book : the book at the as-of time (a DataTree, one node per perpetual; its last
        snapshot is used): adds ``liquidity_shortfall`` (price_shock, second) [USD], the
        shortfall with the positions of the accounts liquidated under each scenario closed
        at the prices the books give (docs/methodology.md, "Shortfall priced by the book").

    Returns ``collateral_ratio`` (account, price_shock, vol_shock|haircut_shock) [1],
    ``accounts_liquidated`` (price_shock, second) [1], ``shortfall`` (price_shock,
    second) [USD]: the sum over accounts of max(0, -N), N the account's value at full
    prices without haircuts or margin, ``worst_collateral_ratio`` (account) [1]: the lowest
    ratio over the grid, and ``span_requirement`` (account) [USD]: the worst
    loss of the account's positions over the 16 CME SPAN scenarios. Lazy where the
    positions are.
    """
    if (vol_shocks is None) == (haircut_shocks is None):
        raise ValueError("give exactly one of vol_shocks or haircut_shocks")
    is_vol = vol_shocks is not None
    second = np.asarray(vol_shocks if is_vol else haircut_shocks, dtype=np.float64)
    second_name = "vol_shock" if is_vol else "haircut_shock"
    shocks = np.asarray(price_shocks, dtype=np.float64)
    if shocks.ndim != 1 or second.ndim != 1 or not shocks.size or not second.size:
        raise ValueError("price_shocks and the second axis must be non-empty 1-D sequences")
    if not (np.isfinite(shocks).all() and np.isfinite(second).all()):
        raise ValueError("shocks must be finite")
    beta = market["beta"].values.astype(float)
    if ((1 + np.outer(shocks, beta)) <= 0).any():
        raise ValueError("a price shock makes a price <= 0 (1 + beta s <= 0)")
    if validate:
        market = ensure_market(market)
        positions = ensure_positions(positions, market)
    pos = in_market_order(positions, market)
    m = market_arrays(market, as_of)
    check_capacities(pos, m, root_search=False)
    lazy = isinstance(pos["position"].data, da.Array)

    def arr(x):
        return x if isinstance(x, da.Array) else da.from_array(np.asarray(x))

    exclude = (positions["qc_row_excluded"].data if "qc_row_excluded" in positions
               else np.zeros(pos.sizes["account"], bool))

    def inputs(target):
        balance = arr(pos["balance"].data).rechunk({0: target, 1: -1})
        chunks = balance.chunks[0]
        rest = [arr(pos[n].data).rechunk((chunks, -1)) for n in ("position", "entry_price", "isolated_margin")]
        isolated = arr((pos["margin_mode"] == "isolated").data).rechunk((chunks,))
        return [balance, *rest, isolated, arr(exclude).rechunk((chunks,))], chunks

    n_acc = pos.sizes["account"]
    kw = {"m": m, "price_shocks": shocks, "second": second, "is_vol": is_vol}
    # the aggregates: per-chunk partial totals (price_shock, second, 2) summed by Dask, and
    # each account's worst ratio; nothing of size accounts x scenarios is materialised
    if aggregate_chunk is None:
        aggregate_chunk = GPU_AGGREGATE_CHUNK if is_cupy(pos["position"].data) else AGGREGATE_CHUNK
    agg_arrays, agg_chunks = inputs(max(1, min(n_acc, aggregate_chunk)))  # also SPAN's, below
    blocks = [x.to_delayed().ravel() for x in agg_arrays]
    run = dask.delayed(_aggregate_block, pure=True, nout=2)
    parts = [run(*(b[i] for b in blocks), **kw) for i in range(len(agg_chunks))]
    totals = da.stack([da.from_delayed(p[0], shape=(shocks.size, second.size, 2), dtype=np.float64)
                       for p in parts]).sum(axis=0)
    worst = da.concatenate([da.from_delayed(p[1], shape=(n,), dtype=np.float64)
                            for p, n in zip(parts, agg_chunks)])
    # the account surfaces, only if asked for: chunks small enough that a block's output
    # (accounts x scenarios) stays near 128 MB
    per_account = shocks.size * second.size * 8
    arrays, chunks = inputs(max(1, min(n_acc, (128 << 20) // per_account)))
    surface = da.map_blocks(_surface_block, *arrays[:4], arrays[4][:, None], arrays[5][:, None], **kw,
                            dtype=np.float64, new_axis=[2], chunks=(chunks, (shocks.size,), (second.size,)),
                            meta=np.empty((0, 0, 0)))
    dims = ("account", "price_shock", second_name)
    coords = {"account": pos["account"].values, "price_shock": shocks, second_name: second}
    grid = ("price_shock", second_name)
    out = xr.Dataset({
        "collateral_ratio": xr.DataArray(surface, dims=dims, coords=coords, attrs={
            "units": "1", "long_name": "collateral ratio C/R under the scenario"}),
        "accounts_liquidated": xr.DataArray(totals[..., 0].astype(np.int64), dims=grid, attrs={
            "units": "1", "long_name": "accounts with collateral ratio < 1"}),
        "shortfall": xr.DataArray(totals[..., 1], dims=grid, attrs={
            "units": "USD", "long_name": "bad debt: sum over accounts of max(0, -N) at full value"}),
        "worst_collateral_ratio": xr.DataArray(worst, dims="account", attrs={
            "units": "1", "long_name": "lowest collateral ratio over the scenario grid"}),
    }, coords=coords)
    scan = _per_instrument(span_scan_range, market, "span_scan_range")
    vol_scan = _per_instrument(span_vol_range, market, "span_vol_range")
    if (scan * max(float(span_extreme_multiple), 1.0) >= 1).any():
        raise ValueError("span_scan_range x span_extreme_multiple must stay below 1 (prices > 0)")
    if np.ptp(vol_scan) > 0:
        raise ValueError("span_vol_range must be the same for every instrument (one vol move per scenario)")
    span = da.map_blocks(_span_block, agg_arrays[1], agg_arrays[2], agg_arrays[5][:, None], m=m, scan=scan,
                         vol_scan=float(vol_scan[0]), multiple=float(span_extreme_multiple),
                         cover=float(span_cover), dtype=np.float64, drop_axis=1, chunks=(agg_chunks,))
    out["span_requirement"] = xr.DataArray(span, dims="account", coords={"account": pos["account"].values},
                                           attrs={"units": "USD", "long_name": "worst loss over the 16 CME "
                                                  "SPAN scenarios (extremes at the cover fraction)"})
    out.attrs.update(span_extreme_multiple=float(span_extreme_multiple), span_cover=float(span_cover))
    if book is not None:
        out["liquidity_shortfall"] = xr.DataArray(
            _liquidity_shortfall(pos, positions, m, shocks, second, is_vol, book), dims=grid,
            attrs={"units": "USD", "long_name": "bad debt of the accounts liquidated, their positions closed at "
                                                "the prices the books give"})
    out["price_shock"].attrs.update(units="1", long_name="common move s: p -> p (1 + beta s)")
    out[second_name].attrs.update(units="1/sqrt(year)" if is_vol else "1",
                                  long_name="implied-vol shift of options" if is_vol else
                                  "haircut add-on (assets with beta != 0, capped at 1)")
    return out if lazy else out.compute()


def _liquidity_shortfall(pos: xr.Dataset, positions: xr.Dataset, m, shocks: np.ndarray, second: np.ndarray,
                         is_vol: bool, book: xr.DataTree) -> np.ndarray:
    """(price_shock, second) bad debt with the closing priced by each perpetual's last
    snapshot in ``book`` (``kernels.contagion.liquidity_shortfall_cpu``), on the host."""
    from .kernels.contagion import liquidity_shortfall_cpu  # noqa: PLC0415
    from .kernels.stress import _second_axis_tables  # noqa: PLC0415

    names = [str(n) for n in pos["instrument"].values]
    unknown = [n for n in book.children if n not in names]
    if unknown:
        raise InputError("book instrument not in the market", instrument=unknown[0], variable="instrument")
    nodes = {n: without_flagged_rows(book[n].to_dataset()) for n in book.children}
    levels = max((ds.sizes["level"] for ds in nodes.values()), default=1)
    ratios = [np.full((len(names), levels), np.nan) for _ in range(2)]
    sizes = [np.zeros((len(names), levels)) for _ in range(2)]
    booked = np.zeros(len(names), dtype=np.bool_)
    for name, ds in nodes.items():
        if ds.sizes["time"] == 0:
            continue
        i = names.index(name)
        last = ds.isel(time=-1)
        for side, (price_var, size_var) in enumerate((("bid_price", "bid_size"), ("ask_price", "ask_size"))):
            price = np.asarray(to_host(last[price_var].values), dtype=np.float64)
            size = np.nan_to_num(np.asarray(to_host(last[size_var].values), dtype=np.float64))
            if not np.isfinite(price[0]):
                break
            ratios[side][i, :price.size] = price / price[0]
            sizes[side][i, :size.size] = size
        else:
            booked[i] = True
    arrays = [np.ascontiguousarray(to_host(pos[v].values), np.float64)
              for v in ("balance", "position", "entry_price", "isolated_margin")]
    isolated = np.ascontiguousarray(np.asarray(pos["margin_mode"].values) == "isolated", np.bool_)
    exclude = np.ascontiguousarray(to_host(positions["qc_row_excluded"].values) if "qc_row_excluded" in positions
                                   else np.zeros(pos.sizes["account"], bool), np.bool_)
    haircuts, vols = _second_axis_tables(m.haircut, m.vol, m.beta, second, is_vol)
    out = np.empty((shocks.size, second.size))
    kernel = timed_kernel("liquidity_shortfall", liquidity_shortfall_cpu)

    def one(k: int) -> None:
        """One column of the second axis (the kernel releases the GIL: columns side by side)."""
        with timed_task("other"):
            column = np.empty(shocks.size)
            kernel(*arrays, isolated, exclude, m._replace(haircut=haircuts[k], vol=vols[k]), shocks,
                   ratios[0], sizes[0], ratios[1], sizes[1], booked, column)
            out[:, k] = column

    with ThreadPoolExecutor(max(1, min(second.size, _local_workers()))) as pool:
        list(pool.map(in_context(one), range(second.size)))
    return out
