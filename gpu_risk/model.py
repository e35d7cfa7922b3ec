"""Account-model quantities shared by every family (one place per formula)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .schema import as_str


def unit_notional(market: xr.Dataset) -> xr.DataArray:
    """USD notional of one unit of each instrument's position.

    linear perpetual: the mark price (a position is in base units); inverse perpetual:
    1 (a position is in USD contracts); option: the underlying's price (a position is
    in units of the underlying).
    """
    kind = as_str(market["kind"].values)
    underlying = as_str(market["underlying"].values)
    asset_price = dict(zip(as_str(market["asset"].values), market["price"].values))
    mark = market["mark_price"].values.astype(float)
    values = np.where(kind == "linear", mark,
                      np.where(kind == "inverse", 1.0,
                               np.array([asset_price.get(u, np.nan) for u in underlying])))
    return xr.DataArray(values, dims="instrument", coords={"instrument": market["instrument"]},
                        attrs={"units": "USD", "long_name": "notional of one unit of position"})


def gross_exposure(position: xr.DataArray, balance: xr.DataArray, market: xr.Dataset) -> xr.DataArray:
    """Each account's gross exposure (USD): the notional of its positions (the sum over
    instruments of |position| x the notional of one unit, :func:`unit_notional`) plus the
    value of what it borrowed (|negative balances| x price): what is at stake when it is
    liquidated, for a trading and a lending account alike. Arrays on the host."""
    unit = unit_notional(market).reindex(instrument=position["instrument"])
    price = market["price"].reindex(asset=balance["asset"])
    return (abs(position) * unit).sum("instrument") + (balance.clip(max=0) * -price).sum("asset")


def notional_at_price(quantity, price, market: xr.Dataset):
    """USD notional of positions ``quantity`` (any shape, instrument last) at prices ``price``
    of their instruments (e.g. the liquidation price): |q| x price for linear perpetuals,
    |q| USD for inverse perpetuals (quantities are USD contracts), |q| x the underlying at
    the same move for options (SPEC's "|q| x liquidation price", in USD for every kind)."""
    kind = as_str(market["kind"].values)
    per_unit_of_mark = unit_notional(market).values / market["mark_price"].values.astype(float)
    return np.where(kind == "inverse", np.abs(quantity), np.abs(quantity) * price * per_unit_of_mark)


def in_market_order(positions: xr.Dataset, market: xr.Dataset) -> xr.Dataset:
    """Positions on the market's instrument and asset axes (missing ones hold nothing); no
    copy when they already are."""
    instruments, assets = market["instrument"].values, market["asset"].values
    if (np.array_equal(positions["instrument"].values, instruments)
            and np.array_equal(positions["asset"].values, assets)):
        return positions
    return positions.reindex(instrument=instruments, asset=assets, fill_value=0.0)
