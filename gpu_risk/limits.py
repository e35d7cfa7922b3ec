"""The operator's summary of a results store: what to act on the morning after a run.

Everything is read from the results store (no input store is opened): the last day's
accounts below a collateral ratio of 1 and within a watch distance of it, the accounts at
risk ranked by gross exposure, the change since the previous day of the headline figures, and
the limits set in the workflow (``limits:``) with a red / amber / green status. The same
dictionary is printed by ``gpu-risk run --json`` and ``gpu-risk report --json``; a red
limit makes ``gpu-risk run`` and ``gpu-risk report`` exit with status 3
(:data:`EXIT_BREACH`).

Example::

    >>> from gpu_risk.limits import Limits, operator_summary
    >>> limits = Limits.model_validate({"accounts_below_1": {"max": 0}})
    >>> summary = operator_summary("results/overnight.zarr", limits)   # doctest: +SKIP
    >>> summary["accounts_below_1"], summary["breached"]               # doctest: +SKIP
    (34, ['accounts_below_1'])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import store

EXIT_BREACH = 3  # the exit status of a run or report whose last day breaches a limit
LIMITS_ATTR = "gpu_risk_limits"  # the limits of the last run, on the results store's root


class Limit(BaseModel):
    """A figure's limit: red above ``max``, amber above ``warn`` (default 80 % of ``max``)."""

    model_config = ConfigDict(extra="forbid")
    max: float
    warn: float | None = None

    @model_validator(mode="after")
    def _default_warn(self) -> Limit:
        if self.warn is None:
            self.warn = 0.8 * self.max
        if self.warn > self.max:
            raise ValueError(f"warn ({self.warn:g}) is above max ({self.max:g})")
        return self


class ShortfallLimit(Limit):
    """The stress shortfall (USD) at one price shock of the grid (the worst over the vol or
    haircut shocks there)."""

    shock: float = Field(description="a price shock of the stress grid, e.g. -0.2")


class Limits(BaseModel):
    """The ``limits:`` section of a workflow. Every limit is optional."""

    model_config = ConfigDict(extra="forbid")
    watch_ratio: float = Field(default=1.1, gt=1.0, description="accounts below this collateral ratio are listed")
    top_accounts: int = Field(default=10, ge=1, le=1000, description="accounts listed, largest gross exposure first")
    accounts_below_1: Limit | None = Field(default=None, description="accounts with collateral ratio < 1")
    accounts_below_watch: Limit | None = Field(default=None, description="accounts with collateral ratio < watch_ratio")
    shortfall: list[ShortfallLimit] = Field(default=[], description="stress shortfall (USD) at price shocks")
    cascade_amplification: Limit | None = Field(
        default=None, description="largest cascade amplification (final move / initial shock)")
    oi_concentration: Limit | None = Field(
        default=None, description="largest single account's share of an instrument's open interest (long + short)")


def _status(value: float | None, limit: Limit) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value > limit.max:
        return "red"
    if limit.warn is not None and value > limit.warn:
        return "amber"
    return "green"


def _number(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


def day_figures(day: xr.DataTree | xr.DataArray, watch: float) -> dict[str, Any]:
    """The headline figures of one results day (those its families allow): the report's
    summary and trends use them too."""
    assert isinstance(day, xr.DataTree), "a results day is a DataTree node"
    out: dict[str, Any] = {}
    if "liquidation" in day.children:
        liq = day["liquidation"].to_dataset()
        ratio = liq["collateral_ratio"].values  # NaN (accounts left out by validation) counts nowhere
        out["accounts_below_1"] = int(np.sum(ratio < 1))
        out["accounts_below_watch"] = int(np.sum(ratio < watch))
        long_oi, short_oi = float(liq["long_open_interest"].sum()), float(liq["short_open_interest"].sum())
        out["open_interest"] = long_oi + short_oi
        out["leverage_imbalance"] = (long_oi - short_oi) / (long_oi + short_oi) if long_oi + short_oi else None
    if "stress" in day.children:
        shortfall = day["stress"].to_dataset()["shortfall"].load()
        out["worst_shortfall"] = _number(shortfall.max())
        if shortfall.notnull().any():
            at = np.unravel_index(int(np.nanargmax(shortfall.values)), shortfall.shape)
            out["worst_scenario"] = {str(dim): float(shortfall[dim].values[i]) for dim, i in zip(shortfall.dims, at)}
    if "cascade" in day.children:
        ca = day["cascade"].to_dataset()
        amp = ca["amplification"].where(~ca["qc_no_quote"])
        out["cascade_amplification"] = _number(amp.max()) if amp.notnull().any() else None
        if "book_exhausted" in ca:
            valid = ca["amplification"].notnull()
            out["cascades_exhausting_book"] = _number(ca["book_exhausted"].where(valid).mean())
    if "positions_summary" in day.children:
        ps = day["positions_summary"].to_dataset()
        if "largest_account_notional" in ps:
            total = ps["long_open_interest"] + ps["short_open_interest"]
            share = (ps["largest_account_notional"] / total.where(total > 0)).max()
            out["oi_concentration"] = _number(share) if share.notnull() else None
    return out


def _top_accounts(liq: xr.Dataset, watch: float, top: int) -> list[dict]:
    """The accounts below ``watch``, largest gross exposure first: the move that liquidates
    each (0 for those already below 1), its collateral value, requirement and gross exposure."""
    ratio = liq["collateral_ratio"].values
    at_risk = np.flatnonzero(ratio < watch)
    if not at_risk.size:
        return []
    notional = (liq["gross_exposure"].values if "gross_exposure" in liq
                else np.full(ratio.size, np.nan))
    order = at_risk[np.argsort(-np.nan_to_num(notional[at_risk], nan=-np.inf), kind="stable")][:top]
    down, up = liq["liquidation_shock_down"].values, liq["liquidation_shock_up"].values
    rows = []
    for a in order:
        move: float | None = 0.0
        if ratio[a] >= 1:
            candidates = [s for s in (down[a], up[a]) if np.isfinite(s)]
            move = min(candidates, key=abs) if candidates else None
        row = {"account": liq["account"].values[a].item(), "collateral_ratio": _number(ratio[a]),
               "move_to_liquidation_pct": None if move is None else 100 * float(move),
               "gross_exposure": _number(notional[a])}
        for name in ("collateral_value", "requirement"):
            row[name] = _number(liq[name].values[a]) if name in liq else None
        rows.append(row)
    return rows


def operator_summary(results_path, limits: Limits | None = None) -> dict[str, Any]:
    """The summary of the last complete day of ``results_path`` (see the module docstring);
    ``limits``: the workflow's, or those recorded by the last run on the store."""
    if limits is None:
        limits = recorded_limits(results_path) or Limits()
    days = store.results_days(results_path)
    if not days:
        return {"date": None, "limits": [], "breached": []}
    results = store.open_results(results_path)
    last, previous = days[-1], (days[-2] if len(days) > 1 else None)
    now = day_figures(results[last], limits.watch_ratio)
    before = day_figures(results[previous], limits.watch_ratio) if previous else {}
    summary: dict[str, Any] = {"date": last, "previous_date": previous, "watch_ratio": limits.watch_ratio}
    summary["accounts_below_1"] = now.get("accounts_below_1")
    summary["accounts_below_watch"] = now.get("accounts_below_watch")
    summary["top_accounts"] = (_top_accounts(results[last]["liquidation"].to_dataset(), limits.watch_ratio,
                                             limits.top_accounts)
                               if "liquidation" in results[last].children else [])
    changes = {}
    for name in ("accounts_below_1", "accounts_below_watch", "open_interest", "leverage_imbalance",
                 "worst_shortfall", "cascade_amplification", "oi_concentration"):
        if name in now:
            value, old = now[name], before.get(name)
            changes[name] = {"value": value, "previous": old,
                             "change": None if value is None or old is None else value - old}
    summary["figures"] = changes
    summary["worst_scenario"] = now.get("worst_scenario")
    summary["cascades_exhausting_book"] = now.get("cascades_exhausting_book")
    checks = []
    for name in ("accounts_below_1", "accounts_below_watch", "cascade_amplification", "oi_concentration"):
        limit = getattr(limits, name)
        if limit is not None:
            value = now.get(name)
            checks.append({"limit": name, "value": value, "max": limit.max, "warn": limit.warn,
                           "status": _status(value, limit)})
    for limit in limits.shortfall:
        value = None
        if "stress" in results[last].children:
            shortfall = results[last]["stress"].to_dataset()["shortfall"]
            hit = np.isclose(shortfall["price_shock"].values, limit.shock, rtol=0, atol=1e-9)
            if hit.any():
                value = _number(shortfall.isel(price_shock=int(np.argmax(hit))).max())
            else:
                raise ValueError(f"limits.shortfall: price shock {limit.shock:g} is not on the stress grid "
                                 f"({', '.join(f'{s:g}' for s in shortfall['price_shock'].values)})")
        checks.append({"limit": f"shortfall at {100 * limit.shock:g} %", "value": value, "max": limit.max,
                       "warn": limit.warn, "status": _status(value, limit)})
    summary["limits"] = checks
    summary["breached"] = [c["limit"] for c in checks if c["status"] == "red"]
    return summary


def record_limits(results_path, limits: Limits | None) -> None:
    """Keep the run's limits with the results, so that ``gpu-risk report`` applies them."""
    import zarr  # noqa: PLC0415

    root = zarr.open_group(str(results_path), mode="r+", zarr_format=3)
    root.attrs[LIMITS_ATTR] = limits.model_dump() if limits is not None else None


def recorded_limits(results_path) -> Limits | None:
    import zarr  # noqa: PLC0415

    try:
        found = zarr.open_group(str(results_path), mode="r", zarr_format=3).attrs.get(LIMITS_ATTR)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None
    return Limits.model_validate(found) if isinstance(found, dict) else None
