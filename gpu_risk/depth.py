"""Depth beyond the visible levels: the models cascades and contagion walk into when a book
runs out, and the fit of the ``power`` model to deep books.

Two models (docs/methodology.md, "Depth beyond the visible levels"), with ``D`` the visible
side's size, ``P_L`` its deepest level and ``M`` the mid, all moved with the shock:

* ``flat`` (a number x > 0): every further ``x M`` of price holds ``D`` again;
* ``"power"``: the cumulative size grows as the distance from the mid to the power gamma,
  ``C(d) = D (d / d_L)^gamma`` through the deepest visible level, gamma per instrument from
  the market's ``depth_exponent``, fitted on deep books by :func:`fit_depth_profile`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from .backend import to_host
from .errors import InputError
from .schema import as_str

POWER = "power"
# the fit's defaults: visible levels as the demo and most stores keep them; snapshots sampled
# evenly over the book (a profile changes slowly; more rows change the median little)
VISIBLE_LEVELS = 10
SNAPSHOTS = 500


def check_depth_extrapolation(value) -> float | str | None:
    """``None``, a flat step x > 0, or ``"power"``; anything else is a one-line error."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() == POWER:
            return POWER
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"depth_extrapolation must be None, a positive number or {POWER!r}, "
                             f"not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not (
            np.isfinite(value) and value > 0):
        raise ValueError(f"depth_extrapolation must be None, a positive number or {POWER!r}, not {value!r}")
    return float(value)


def depth_parameters(depth_extrapolation, market: xr.Dataset, names: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Per instrument the kernels' (flat step, power exponent), NaN where unused. The power
    model needs the market's ``depth_exponent`` for every instrument walked."""
    model = check_depth_extrapolation(depth_extrapolation)
    names = list(names)
    if model is None:
        return dict.fromkeys(names, (np.nan, np.nan))
    if model != POWER:
        return {name: (float(model), np.nan) for name in names}
    if "depth_exponent" not in market:
        raise InputError("depth_extrapolation='power' needs the market's depth_exponent per instrument (fit it "
                         "with `gpu-risk fit-depth`)", variable="depth_exponent")
    market_names = list(as_str(market["instrument"].values))
    exponent = np.asarray(market["depth_exponent"].values, dtype=float)
    out = {}
    for name in names:
        g = exponent[market_names.index(name)]
        if not (np.isfinite(g) and g > 0):
            raise InputError("depth_extrapolation='power' but the market has no fitted depth_exponent here "
                             "(fit it with `gpu-risk fit-depth`)", instrument=name, variable="depth_exponent")
        out[name] = (np.nan, float(g))
    return out


def describe(depth_extrapolation) -> str:
    """The setting as recorded on results (``none``, the step, or ``power``)."""
    model = check_depth_extrapolation(depth_extrapolation)
    return "none" if model is None else str(model)


def _side_exponents(price: np.ndarray, size: np.ndarray, mid: np.ndarray, visible: int) -> np.ndarray:
    """Per snapshot row, gamma of ``log(C_j / C_L) = gamma log(d_j / d_L)`` by least squares
    through the anchor (the deepest visible level L), over the levels beyond it with a
    price; NaN where fewer than two such levels."""
    n = price.shape[0]
    out = np.full(n, np.nan)
    cum = np.cumsum(np.where(np.isfinite(price) & (size > 0), size, 0.0), axis=1)
    distance = np.abs(price / mid[:, None] - 1.0)
    for r in range(n):
        d_l, c_l = distance[r, visible - 1], cum[r, visible - 1]
        if not (np.isfinite(d_l) and d_l > 0 and c_l > 0):
            continue
        beyond = np.isfinite(distance[r]) & (np.arange(price.shape[1]) >= visible) & (distance[r] > d_l)
        if beyond.sum() < 2:
            continue
        x = np.log(distance[r, beyond] / d_l)
        y = np.log(cum[r, beyond] / c_l)
        out[r] = float((x * y).sum() / (x * x).sum())
    return out


def fit_depth_profile(book: xr.DataTree | xr.Dataset, *, visible_levels: int = VISIBLE_LEVELS,
                      snapshots: int = SNAPSHOTS) -> xr.Dataset:
    """Fit the ``power`` depth model on deep books (more levels than the stores that will use
    it keep).

    For each of ``snapshots`` rows spread evenly over each instrument's book, and each side,
    gamma solves ``log(C_j / C_L) = gamma log(d_j / d_L)`` by least squares over the levels j
    beyond the deepest visible level L (``visible_levels``), with C the cumulative size and
    d the relative distance from the mid; the fit is the median over rows and sides.

    Returns a Dataset on ``instrument``: ``depth_exponent`` [1] (put it in the market data;
    ``depth_extrapolation="power"`` reads it), ``depth_exponent_bid`` and ``_ask`` (medians
    per side), ``depth_exponent_q25`` and ``_q75`` (spread over rows and sides), ``rows``
    (rows fitted), ``levels`` (levels of the book), ``max_distance`` (median relative
    distance of the deepest level fitted).

    Example::

        >>> fit = gpu_risk.fit_depth_profile(gpu_risk.open_book("binance_1000_levels.zarr"))  # doctest: +SKIP
        >>> float(fit.depth_exponent.sel(instrument="BTCUSDT"))                              # doctest: +SKIP
        1.2
    """
    if visible_levels < 1:
        raise ValueError("visible_levels must be at least 1")
    if isinstance(book, xr.Dataset):
        book = xr.DataTree.from_dict({f"/{book.attrs.get('instrument', 'book')}": book})
    names = sorted(book.children)
    if not names:
        raise InputError("the book has no instrument")
    fields = ("depth_exponent", "depth_exponent_bid", "depth_exponent_ask", "depth_exponent_q25",
              "depth_exponent_q75", "rows", "levels", "max_distance")
    rows: dict[str, list[float]] = {name: [] for name in fields}
    for name in names:
        ds = book[name].to_dataset()
        levels = ds.sizes.get("level", 0)
        if levels < visible_levels + 2:
            raise InputError(f"{levels} levels: a fit beyond {visible_levels} visible levels needs at least "
                             f"{visible_levels + 2}", instrument=name, variable="level")
        n = ds.sizes["time"]
        if n == 0:
            raise InputError("no snapshot to fit", instrument=name)
        pick = np.unique(np.linspace(0, n - 1, min(n, snapshots)).round().astype(np.int64))
        arrays = {v: np.asarray(to_host(ds[v].data[pick]), dtype=np.float64)
                  for v in ("bid_price", "bid_size", "ask_price", "ask_size")}
        mid = 0.5 * (arrays["bid_price"][:, 0] + arrays["ask_price"][:, 0])
        bid = _side_exponents(arrays["bid_price"], arrays["bid_size"], mid, visible_levels)
        ask = _side_exponents(arrays["ask_price"], arrays["ask_size"], mid, visible_levels)
        both = np.concatenate([bid, ask])
        fitted = both[np.isfinite(both)]
        if fitted.size == 0:
            raise InputError(f"no snapshot has two levels with a price beyond the {visible_levels} visible ones",
                             instrument=name)
        deepest = []
        for side in ("bid", "ask"):
            price = arrays[f"{side}_price"]
            last = np.where(np.isfinite(price), np.arange(levels), -1).max(axis=1)
            ok = last >= 0
            deepest.append(np.abs(price[ok, last[ok]] / mid[ok] - 1.0))
        rows["depth_exponent"].append(float(np.median(fitted)))
        rows["depth_exponent_bid"].append(float(np.nanmedian(bid)) if np.isfinite(bid).any() else np.nan)
        rows["depth_exponent_ask"].append(float(np.nanmedian(ask)) if np.isfinite(ask).any() else np.nan)
        rows["depth_exponent_q25"].append(float(np.quantile(fitted, 0.25)))
        rows["depth_exponent_q75"].append(float(np.quantile(fitted, 0.75)))
        rows["rows"].append(int(fitted.size))
        rows["levels"].append(int(levels))
        rows["max_distance"].append(float(np.nanmedian(np.concatenate(deepest))))
    units = {"rows": "1", "levels": "1", "max_distance": "1"}
    out = xr.Dataset({k: ("instrument", np.asarray(v), {"units": units.get(k, "1")}) for k, v in rows.items()},
                     coords={"instrument": np.array(names, dtype=str)})
    out["depth_exponent"].attrs["long_name"] = ("gamma of the power depth model: cumulative size ~ distance from "
                                                "the mid ** gamma beyond the visible levels")
    out.attrs.update(model=POWER, visible_levels=int(visible_levels), snapshots=int(snapshots))
    return out
