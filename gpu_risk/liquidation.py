"""Liquidation thresholds (SPEC section 2) over positions of any size, lazily on Dask.

Accounts are independent, so the kernel runs once per account chunk; the instrument and
asset axes are one chunk each. See ``kernels/liquidation.py`` for the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from .backend import asarray_like, dispatch, empty_like_backend, is_cupy, on_host, to_host
from .errors import InputError
from .kernels.liquidation import (
    FIXED_COLUMNS,
    GPU_MAX_ASSETS,
    GPU_MAX_INSTRUMENTS,
    INVERSE,
    LINEAR,
    MAX_KINKS,
    OPTION,
    Market,
    liquidation_cpu,
    liquidation_gpu,
)
from .model import gross_exposure, in_market_order, notional_at_price
from .schema import as_str
from .summary import open_interest
from .validate import ensure_market, ensure_positions

liquidation_kernel = dispatch(liquidation_cpu, liquidation_gpu)

KIND_CODES = {"linear": LINEAR, "inverse": INVERSE, "option": OPTION}
FACTOR_RANGE = (1e-6, 100.0)  # liquidation prices searched between 1e-6 and 100 x the mark
SHOCK_RANGE = (-0.99, 10.0)  # SPEC: common moves in [-0.99, +10]
DEFAULT_MAP_BINS = np.round(np.linspace(-0.5, 0.5, 101), 10)


def check_capacities(pos: xr.Dataset, m: Market, *, root_search: bool) -> None:
    """Refuse, before any task runs, what the kernels cannot hold (never drop it silently):
    on the GPU more than ``GPU_MAX_ASSETS`` assets or ``GPU_MAX_INSTRUMENTS`` instruments;
    with ``root_search`` (liquidation prices), an account whose positions cross more than
    ``MAX_KINKS`` - 2 bracket boundaries. The positions are read (one pass over
    ``position``) only when the market's brackets could exceed it at all."""
    n_assets, n_inst = pos.sizes["asset"], pos.sizes["instrument"]
    if is_cupy(pos["position"].data) and (n_assets > GPU_MAX_ASSETS or n_inst > GPU_MAX_INSTRUMENTS):
        raise InputError(f"the GPU kernels hold at most {GPU_MAX_ASSETS} assets and {GPU_MAX_INSTRUMENTS} "
                         f"instruments; this market has {n_assets} and {n_inst} (use --backend cpu)",
                         variable="instrument")
    if not root_search:
        return
    used = np.isfinite(m.floor).sum(axis=1)
    boundaries = np.where(m.kind == LINEAR, np.maximum(used - 1, 0), 0).astype(np.float64)
    if 2 + boundaries.sum() <= MAX_KINKS:
        return
    held = (pos["position"] != 0).astype(np.float64)
    per_account = 2 + (held * xr.DataArray(boundaries, dims="instrument")).sum("instrument")
    data = per_account.data
    need = np.asarray(to_host(data.compute() if hasattr(data, "compute") else data))
    worst = int(np.argmax(need))
    if need[worst] > MAX_KINKS:
        raise InputError(f"an account's positions cross {int(need[worst]) - 2} bracket boundaries; the "
                         f"liquidation kernels hold at most {MAX_KINKS - 2}", variable="position",
                         index=worst, label=pos["account"].values[worst], count=int((need > MAX_KINKS).sum()))


def market_arrays(market: xr.Dataset, as_of=None) -> Market:
    """The market as the kernels' record of plain arrays (assets and instruments in market
    order; see :class:`gpu_risk.kernels.liquidation.Market`)."""
    assets = list(as_str(market["asset"].values))
    kind = np.array([KIND_CODES[k] for k in as_str(market["kind"].values)], dtype=np.int64)
    underlying = np.array([assets.index(u) for u in as_str(market["underlying"].values)], dtype=np.int64)
    if as_of is None:
        as_of = market.attrs.get("as_of") or market.attrs.get("date")
    n = market.sizes["instrument"]
    years = np.zeros(n)
    if "expiry" in market and as_of is not None:
        expiry = market["expiry"].values.astype("datetime64[ns]")
        seconds = (expiry - np.datetime64(pd.Timestamp(as_of).tz_localize(None), "ns")) / np.timedelta64(1, "s")
        years = np.where(np.isnat(expiry), 0.0, seconds / (365.25 * 86_400))
    get = lambda name: market[name].values.astype(np.float64) if name in market else np.full(n, np.nan)  # noqa: E731
    call_put = as_str(market["call_put"].values) if "call_put" in market else np.full(n, "")
    return Market(
        price=market["price"].values.astype(np.float64),
        haircut=market["haircut"].values.astype(np.float64),
        beta=market["beta"].values.astype(np.float64),
        kind=kind, underlying=underlying,
        mark=market["mark_price"].values.astype(np.float64),
        strike=get("strike"), years=years, vol=get("implied_vol"),
        is_call=call_put == "call",
        floor=market["notional_floor"].values.astype(np.float64),
        mmr=market["mmr"].values.astype(np.float64),
        amount=market["maintenance_amount"].values.astype(np.float64),
    )


def _block(balance, position, entry, iso_margin, isolated, exclude, m):
    """One account chunk, on the backend its arrays are on (CUDA for CuPy, numba otherwise)."""
    if not is_cupy(balance):
        balance, position, entry, iso_margin = (np.ascontiguousarray(x, np.float64)
                                                for x in (balance, position, entry, iso_margin))
        isolated = np.ascontiguousarray(np.asarray(isolated).ravel(), np.bool_)
    out = empty_like_backend(balance, (position.shape[0], position.shape[1] + FIXED_COLUMNS))
    liquidation_kernel(balance, position, entry, iso_margin, isolated.ravel(), m, *FACTOR_RANGE, *SHOCK_RANGE, out)
    out[asarray_like(out, exclude, bool).ravel()] = np.nan  # qc-flagged accounts are left out
    return out



def liquidation(positions: xr.Dataset, market: xr.Dataset, *, map_bins: Sequence[float] | np.ndarray = DEFAULT_MAP_BINS,
                as_of=None, validate: bool = True) -> xr.Dataset:
    """Liquidation thresholds of every account (SPEC section 2).

    Parameters
    ----------
    positions : positions Dataset (``open_positions``), NumPy- or Dask-backed; accounts
        flagged ``qc_row_excluded`` get NaN and stay out of the aggregates.
    market : market Dataset (``open_market``).
    map_bins : edges of the liquidation map's bins, as liquidation price / mark - 1.
    as_of : time options are valued at (default: the market's ``as_of`` or ``date``).

    Returns ``collateral_ratio`` (account) [1], ``liquidation_price`` (account, instrument)
    [quote currency], ``distance_to_liquidation`` [1], ``liquidation_shock_down`` and
    ``liquidation_shock_up`` (account) [1], ``liquidation_map`` (instrument, price_bin,
    side) [USD], ``long_open_interest``, ``short_open_interest`` [USD] and ``oi_imbalance``
    (instrument) [1]. Lazy where the positions are.
    """
    if validate:
        market = ensure_market(market)
        positions = ensure_positions(positions, market)
    instruments = market["instrument"].values
    pos = in_market_order(positions, market)
    m = market_arrays(market, as_of)
    check_capacities(pos, m, root_search=True)
    lazy = isinstance(pos["position"].data, da.Array)

    def arr(name, fill=0.0):
        x = pos[name].data
        return x if isinstance(x, da.Array) else da.from_array(np.asarray(x))

    balance = arr("balance").rechunk({1: -1})
    account_chunks = balance.chunks[0]
    position = arr("position").rechunk((account_chunks, -1))
    entry = arr("entry_price").rechunk((account_chunks, -1))
    iso = arr("isolated_margin").rechunk((account_chunks, -1))
    is_isolated = (pos["margin_mode"] == "isolated").data
    isolated = is_isolated if isinstance(is_isolated, da.Array) else da.from_array(np.asarray(is_isolated))
    isolated = isolated.rechunk((account_chunks,))
    exclude = (positions["qc_row_excluded"].data if "qc_row_excluded" in positions
               else np.zeros(pos.sizes["account"], bool))
    exclude = exclude if isinstance(exclude, da.Array) else da.from_array(np.asarray(exclude))
    exclude = exclude.rechunk((account_chunks,))
    n_inst = len(instruments)
    packed = da.map_blocks(_block, balance, position, entry, iso, isolated[:, None], exclude[:, None], m=m,
                           dtype=np.float64, chunks=(account_chunks, (n_inst + FIXED_COLUMNS,)), meta=balance._meta)
    if is_cupy(packed):  # results come back to the host: they are small next to the inputs
        packed = packed.map_blocks(to_host, dtype=np.float64, meta=np.empty((0, 0)))
    acc = {"account": pos["account"].values}
    inst = {"instrument": instruments}
    lp = xr.DataArray(packed[:, FIXED_COLUMNS:], dims=("account", "instrument"), coords=acc | inst,
                      attrs={"units": "quote currency", "long_name": "mark at which C = R (NaN if none)"})
    mark = xr.DataArray(m.mark, dims="instrument", coords=inst)
    out = xr.Dataset({
        "collateral_ratio": xr.DataArray(packed[:, 0], dims="account", coords=acc,
                                         attrs={"units": "1", "long_name": "collateral value / requirement C/R"}),
        "liquidation_price": lp,
        "distance_to_liquidation": (lp / mark - 1).assign_attrs(units="1", long_name="liquidation_price / mark - 1"),
        "liquidation_shock_down": xr.DataArray(packed[:, 1], dims="account", coords=acc, attrs={
            "units": "1", "long_name": "nearest common move s <= 0 (beta-scaled) at which C = R"}),
        "liquidation_shock_up": xr.DataArray(packed[:, 2], dims="account", coords=acc, attrs={
            "units": "1", "long_name": "nearest common move s >= 0 (beta-scaled) at which C = R"}),
        "collateral_value": xr.DataArray(packed[:, 3], dims="account", coords=acc, attrs={
            "units": "USD", "long_name": "collateral value C at current prices (all parts of the account)"}),
        "requirement": xr.DataArray(packed[:, 4], dims="account", coords=acc, attrs={
            "units": "USD", "long_name": "requirement R at current prices (all parts of the account)"}),
        "gross_exposure": gross_exposure(on_host(pos["position"]), on_host(pos["balance"]), market).where(
            ~xr.DataArray(exclude, dims="account", coords=acc)).assign_attrs(
            units="USD", long_name="notional of the positions plus value of the borrowed assets"),
    })
    out["liquidation_map"] = liquidation_map(pos["position"], out["liquidation_price"], market, map_bins)
    positions_kept = pos.assign(qc_row_excluded=("account", exclude)) if "qc_row_excluded" in positions else pos
    out = out.merge(open_interest(positions_kept, market))
    return out if lazy else out.compute()


def liquidation_map(position: xr.DataArray, liquidation_price: xr.DataArray, market: xr.Dataset,
                    bins: Sequence[float] | np.ndarray) -> xr.DataArray:
    """Notional (USD at the liquidation price) of positions whose liquidation price falls in
    each bin of liquidation_price / mark - 1, per instrument and side (long, short)."""
    edges = np.asarray(bins, dtype=np.float64)
    mark = market["mark_price"].values.astype(np.float64)
    q = position.data if isinstance(position.data, da.Array) else da.from_array(np.asarray(position.data))
    lp = liquidation_price.data
    q = q.rechunk(lp.chunks)

    def block(q, lp):
        q = to_host(q)  # the liquidation prices are already on the host
        out = np.zeros((q.shape[1], edges.size - 1, 2))
        rel = lp / mark - 1
        notional = notional_at_price(q, lp, market)
        for i in range(q.shape[1]):
            for side, sel in ((0, q[:, i] > 0), (1, q[:, i] < 0)):
                ok = sel & np.isfinite(rel[:, i])
                out[i, :, side] = np.histogram(rel[ok, i], bins=edges, weights=notional[ok, i])[0]
        return out[None]

    parts = da.map_blocks(block, q, lp, dtype=np.float64, new_axis=[2, 3],
                          chunks=((1,) * q.numblocks[0], (q.shape[1],), (edges.size - 1,), (2,)))
    total = parts.sum(axis=0)
    centers = (edges[:-1] + edges[1:]) / 2
    return xr.DataArray(total, dims=("instrument", "price_bin", "side"),
                        coords={"instrument": market["instrument"].values, "price_bin": centers,
                                "side": ["long", "short"],
                                "price_bin_lower": ("price_bin", edges[:-1]),
                                "price_bin_upper": ("price_bin", edges[1:])},
                        attrs={"units": "USD",
                               "long_name": "notional liquidated per bin of liquidation price / mark - 1"})
