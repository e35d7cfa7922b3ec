"""Collateral-ratio stress surfaces (SPEC section 3), lazily over account chunks."""

from __future__ import annotations

from typing import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from .kernels.stress import stress_cpu
from .liquidation import MARKET_ORDER, market_arrays
from .validate import validate_market, validate_positions


def _block(balance, position, entry, iso_margin, isolated, exclude, m, price_shocks, second, is_vol):
    isolated, exclude = np.asarray(isolated).ravel(), np.asarray(exclude, dtype=bool).ravel()
    out = np.empty((position.shape[0], price_shocks.size, second.size, 2))
    stress_cpu(np.ascontiguousarray(balance, np.float64), np.ascontiguousarray(position, np.float64),
               np.ascontiguousarray(entry, np.float64), np.ascontiguousarray(iso_margin, np.float64),
               np.ascontiguousarray(isolated, np.bool_), *(m[k] for k in MARKET_ORDER), price_shocks,
               second, is_vol, out)
    out[exclude] = np.nan  # qc-flagged accounts are left out of the surfaces
    return out


def stress_surface(positions: xr.Dataset, market: xr.Dataset, price_shocks: Sequence[float], *,
                   vol_shocks: Sequence[float] | None = None, haircut_shocks: Sequence[float] | None = None,
                   as_of=None, validate: bool = True) -> xr.Dataset:
    """Every account's collateral ratio over price shocks x (vol or haircut) shocks.

    Parameters
    ----------
    price_shocks : common moves s; every asset price becomes p (1 + beta s) and each mark
        moves with its underlying [1].
    vol_shocks : absolute changes of implied vol (options only) [1/sqrt(year)]; or
    haircut_shocks : added to the haircut of every asset with beta != 0, capped at 1 [1].

    Returns ``collateral_ratio`` (account, price_shock, vol_shock|haircut_shock) [1],
    ``accounts_liquidated`` (price_shock, second) [1] and ``shortfall`` (price_shock,
    second) [USD]: the sum over accounts of max(0, -N), N the account's value at full
    prices without haircuts or margin. Lazy where the positions are.
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
        validate_market(market)
        if "qc_row_excluded" not in positions:
            positions = validate_positions(positions, market)
    pos = positions.reindex(instrument=market["instrument"].values, asset=market["asset"].values,
                            fill_value=0.0)
    m = market_arrays(market, as_of)
    lazy = isinstance(pos["position"].data, da.Array)

    def arr(x):
        return x if isinstance(x, da.Array) else da.from_array(np.asarray(x))

    balance = arr(pos["balance"].data).rechunk({1: -1})
    chunks = balance.chunks[0]
    rest = [arr(pos[n].data).rechunk((chunks, -1)) for n in ("position", "entry_price", "isolated_margin")]
    isolated = arr((pos["margin_mode"] == "isolated").data).rechunk((chunks,))
    exclude = positions["qc_row_excluded"].data if "qc_row_excluded" in positions else np.zeros(pos.sizes["account"], bool)
    exclude = arr(exclude).rechunk((chunks,))
    packed = da.map_blocks(_block, balance, *rest, isolated[:, None], exclude[:, None], m=m,
                           price_shocks=shocks, second=second, is_vol=is_vol, dtype=np.float64,
                           new_axis=[2, 3], chunks=(chunks, (shocks.size,), (second.size,), (2,)))
    dims = ("account", "price_shock", second_name)
    coords = {"account": pos["account"].values, "price_shock": shocks, second_name: second}
    ratio = xr.DataArray(packed[..., 0], dims=dims, coords=coords,
                         attrs={"units": "1", "long_name": "collateral ratio C/R under the scenario"})
    value = xr.DataArray(packed[..., 1], dims=dims, coords=coords)
    out = xr.Dataset({
        "collateral_ratio": ratio,
        "accounts_liquidated": (ratio < 1).sum("account").astype(np.int64).assign_attrs(
            units="1", long_name="accounts with collateral ratio < 1"),
        "shortfall": (-value).clip(min=0).sum("account").assign_attrs(
            units="USD", long_name="bad debt: sum over accounts of max(0, -N) at full value"),
    })
    out["price_shock"].attrs.update(units="1", long_name="common move s: p -> p (1 + beta s)")
    out[second_name].attrs.update(units="1/sqrt(year)" if is_vol else "1",
                                  long_name="implied-vol shift of options" if is_vol else
                                  "haircut add-on (assets with beta != 0, capped at 1)")
    return out if lazy else out.compute()
