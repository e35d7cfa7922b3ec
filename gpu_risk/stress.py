"""Collateral-ratio stress surfaces (SPEC section 3), lazily over account chunks."""

from __future__ import annotations

from typing import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from .kernels.stress import span_cpu, stress_cpu
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


def _span_block(position, entry, exclude, m, scan, vol_scan, multiple, cover):
    out = np.empty(position.shape[0])
    span_cpu(np.ascontiguousarray(position, np.float64), np.ascontiguousarray(entry, np.float64),
             m["price"], m["kind"], m["underlying"], m["mark"], m["strike"], m["years"], m["vol"],
             m["is_call"], scan, vol_scan, multiple, cover, m["floor"], m["mmr"], m["amount"], out)
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
                   as_of=None, validate: bool = True) -> xr.Dataset:
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

    Returns ``collateral_ratio`` (account, price_shock, vol_shock|haircut_shock) [1],
    ``accounts_liquidated`` (price_shock, second) [1], ``shortfall`` (price_shock,
    second) [USD]: the sum over accounts of max(0, -N), N the account's value at full
    prices without haircuts or margin, and ``span_requirement`` (account) [USD]: the worst
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
        validate_market(market)
        if "qc_row_excluded" not in positions:
            positions = validate_positions(positions, market)
    pos = positions.reindex(instrument=market["instrument"].values, asset=market["asset"].values,
                            fill_value=0.0)
    m = market_arrays(market, as_of)
    lazy = isinstance(pos["position"].data, da.Array)

    def arr(x):
        return x if isinstance(x, da.Array) else da.from_array(np.asarray(x))

    # account chunks small enough that a block's (accounts x scenarios x 2) output stays
    # near 128 MB: memory is bounded by the chunk, not by the number of accounts
    per_account = shocks.size * second.size * 2 * 8
    target = max(1, min(pos.sizes["account"], (128 << 20) // per_account))
    balance = arr(pos["balance"].data).rechunk({0: target, 1: -1})
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
    scan = _per_instrument(span_scan_range, market, "span_scan_range")
    vol_scan = _per_instrument(span_vol_range, market, "span_vol_range")
    if (scan * max(float(span_extreme_multiple), 1.0) >= 1).any():
        raise ValueError("span_scan_range x span_extreme_multiple must stay below 1 (prices > 0)")
    if np.ptp(vol_scan) > 0:
        raise ValueError("span_vol_range must be the same for every instrument (one vol move per scenario)")
    span = da.map_blocks(_span_block, rest[0], rest[1], exclude[:, None], m=m, scan=scan,
                         vol_scan=float(vol_scan[0]), multiple=float(span_extreme_multiple),
                         cover=float(span_cover), dtype=np.float64, drop_axis=1, chunks=(chunks,))
    out["span_requirement"] = xr.DataArray(span, dims="account", coords={"account": pos["account"].values},
                                           attrs={"units": "USD", "long_name": "worst loss over the 16 CME "
                                                  "SPAN scenarios (extremes at the cover fraction)"})
    out.attrs.update(span_extreme_multiple=float(span_extreme_multiple), span_cover=float(span_cover))
    out["price_shock"].attrs.update(units="1", long_name="common move s: p -> p (1 + beta s)")
    out[second_name].attrs.update(units="1/sqrt(year)" if is_vol else "1",
                                  long_name="implied-vol shift of options" if is_vol else
                                  "haircut add-on (assets with beta != 0, capped at 1)")
    return out if lazy else out.compute()
