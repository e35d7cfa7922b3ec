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
