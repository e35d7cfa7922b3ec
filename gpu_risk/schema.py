"""The SPEC's data contract: variables, dims and dtypes of the book, positions and market
datasets, with their units and long names. Validation and writers read these tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Var:
    dims: tuple[str, ...]
    kind: str  # numpy dtype kind(s) accepted: "f" float, "i" int, "M" datetime, "U" string
    units: str
    long_name: str
    required: bool = True


BOOK_VARS: dict[str, Var] = {
    "bid_price": Var(("time", "level"), "f", "quote currency", "bid price per level; NaN where empty"),
    "ask_price": Var(("time", "level"), "f", "quote currency", "ask price per level; NaN where empty"),
    "bid_size": Var(("time", "level"), "f", "base units", "resting bid quantity per level; 0 where empty"),
    "ask_size": Var(("time", "level"), "f", "base units", "resting ask quantity per level; 0 where empty"),
}
# Optional per-snapshot variables an importer may add (the grids ignore them for now).
BOOK_OPTIONAL_VARS: dict[str, Var] = {
    "traded_volume": Var(("time",), "f", "base units",
                         "signed volume executed by this event: + buyer-initiated, - seller-initiated",
                         required=False),
}
BOOK_COORDS: dict[str, Var] = {
    "time": Var(("time",), "M", "UTC", "event time of the snapshot"),
    "level": Var(("level",), "iu", "1", "book level, 1 = best"),
}

POSITION_VARS: dict[str, Var] = {
    "balance": Var(("account", "asset"), "f", "asset units", "signed balance; negative = borrowed"),
    "position": Var(("account", "instrument"), "f", "contracts (base units; USD for inverse)", "signed position"),
    "entry_price": Var(("account", "instrument"), "f", "quote currency", "average entry price"),
    "margin_mode": Var(("account",), "UT", "1", "cross or isolated"),
    "isolated_margin": Var(("account", "instrument"), "f", "quote currency (coin for inverse)",
                           "wallet margin of an isolated position"),
}
MARGIN_MODES = ("cross", "isolated")

MARKET_ASSET_VARS: dict[str, Var] = {
    "price": Var(("asset",), "f", "USD", "asset price"),
    "haircut": Var(("asset",), "f", "1", "collateral haircut; value = qty*price*(1-haircut)"),
    "beta": Var(("asset",), "f", "1", "beta to the market factor"),
}
MARKET_INSTRUMENT_VARS: dict[str, Var] = {
    "kind": Var(("instrument",), "UT", "1", "linear, inverse or option"),
    "underlying": Var(("instrument",), "UT", "1", "underlying asset"),
    "mark_price": Var(("instrument",), "f", "USD", "mark price"),
    "strike": Var(("instrument",), "f", "USD", "option strike; NaN for perpetuals", required=False),
    "expiry": Var(("instrument",), "M", "UTC", "option expiry; NaT for perpetuals", required=False),
    "call_put": Var(("instrument",), "UT", "1", "call or put; empty for perpetuals", required=False),
    "implied_vol": Var(("instrument",), "f", "1/sqrt(year)", "Black-76 implied volatility", required=False),
    "depth_exponent": Var(("instrument",), "f", "1", "gamma of the power depth model (cumulative size ~ "
                          "distance ** gamma beyond the visible levels); NaN: not fitted", required=False),
}
MARKET_BRACKET_VARS: dict[str, Var] = {
    "notional_floor": Var(("instrument", "bracket"), "f", "USD", "lower notional bound of the bracket"),
    "mmr": Var(("instrument", "bracket"), "f", "1", "maintenance margin rate"),
    "maintenance_amount": Var(("instrument", "bracket"), "f", "USD", "maintenance amount (cum)"),
}
INSTRUMENT_KINDS = ("linear", "inverse", "option")
OPTION_RIGHTS = ("call", "put")


def dtype_matches(dtype: np.dtype, kinds: str) -> bool:
    """Whether ``dtype`` is one of the accepted kinds ("T" = numpy StringDType / object str)."""
    if dtype.kind in kinds:
        return True
    if "T" in kinds and (dtype.kind == "O" or dtype.kind == "T"):
        return True
    return False


def describe(var: Var) -> dict[str, str]:
    """Attributes for a variable. Datetimes get no ``units`` (xarray's CF encoding owns it)."""
    if var.kind == "M":
        return {"long_name": var.long_name, "timezone": var.units}
    return {"units": var.units, "long_name": var.long_name}


def as_str(values) -> np.ndarray:
    """Any string array (``<U``, object or numpy StringDType) as a fixed-width ``str`` array."""
    values = np.asarray(values)
    if values.dtype.kind == "U":
        return values
    return np.array(values.astype(object).tolist(), dtype=str).reshape(values.shape)
