"""Validation of book, positions and market datasets against the SPEC's bad-input rules.

Every rule either raises :class:`~gpu_risk.errors.InputError` naming the store,
variable, instrument and first offending index (``on_bad_rows="raise"``, the
default) or, with ``on_bad_rows="flag"``, adds boolean ``qc_*`` variables that
mark the rows left out of every computation (``qc_row_excluded`` is their union).
Structural problems (a missing variable, wrong dims or dtype) always raise: there
is no row to leave out.
"""

from __future__ import annotations

from typing import Literal

import dask
import numpy as np
import xarray as xr

from .backend import on_host
from .errors import InputError, SchemaError
from .schema import (
    BOOK_COORDS,
    BOOK_VARS,
    INSTRUMENT_KINDS,
    MARGIN_MODES,
    MARKET_ASSET_VARS,
    MARKET_BRACKET_VARS,
    MARKET_INSTRUMENT_VARS,
    OPTION_RIGHTS,
    POSITION_VARS,
    Var,
    as_str,
    dtype_matches,
)

OnBadRows = Literal["raise", "flag"]

QC_DESCRIPTIONS = {
    "qc_bad_size": "a size is NaN or negative, or positive at an empty level",
    "qc_bad_price": "a price is zero, negative or infinite",
    "qc_ladder": "price ladder not strictly monotone, or a filled level below an empty one",
    "qc_crossed": "crossed book: best bid >= best ask",
    "qc_time_order": "time is NaT or earlier than a previous snapshot",
    "qc_unknown_instrument": "holds a position in an instrument absent from the market",
    "qc_unknown_asset": "holds a balance in an asset absent from the market",
    "qc_nan_value": "NaN balance, position or isolated margin",
    "qc_bad_entry_price": "open position with NaN or non-positive entry price",
    "qc_bad_margin_mode": "margin_mode is neither 'cross' nor 'isolated'",
    "qc_isolated_margin_on_cross": "isolated margin on a cross-margined account",
    "qc_bad_isolated_margin": "negative isolated margin",
}


def _check_on_bad_rows(on_bad_rows: str) -> None:
    if on_bad_rows not in ("raise", "flag"):
        raise ValueError(f"on_bad_rows must be 'raise' or 'flag', not {on_bad_rows!r}")


def check_structure(
    ds: xr.Dataset, spec: dict[str, Var], *, store: str | None, instrument: str | None = None
) -> None:
    """Raise :class:`SchemaError` for a missing variable, wrong dims or wrong dtype."""
    for name, var in spec.items():
        if name not in ds.variables:
            if var.required:
                raise SchemaError(f"missing variable {name!r}", store=store, variable=name,
                                  instrument=instrument)
            continue
        got = ds[name]
        if tuple(got.dims) != var.dims:
            raise SchemaError(f"variable {name!r} has dims {tuple(got.dims)}, expected {var.dims}",
                              store=store, variable=name, instrument=instrument)
        if not dtype_matches(got.dtype, var.kind):
            raise SchemaError(f"variable {name!r} has dtype {got.dtype}, expected kind {var.kind!r}",
                              store=store, variable=name, instrument=instrument)


def _first_bad(flags: dict[tuple[str, str], xr.DataArray]) -> dict[tuple[str, str], tuple[int, int]]:
    """(count, first index) of every flag, computed in one pass over the data."""
    keys = list(flags)
    counts = [flags[k].data.sum() for k in keys]
    firsts = [flags[k].data.argmax() for k in keys]
    results = dask.compute(*counts, *firsts)
    n = len(keys)
    return {k: (int(results[i]), int(results[n + i])) for i, k in enumerate(keys)}


def _raise_or_flag(
    ds: xr.DataArray,
    flags: dict[tuple[str, str], xr.DataArray],
    dim: str,
    on_bad_rows: OnBadRows,
    *,
    store: str | None,
    instrument: str | None,
) -> xr.Dataset:
    # flags are small per-row results: on the host, whatever backend the data is on
    flags = {key: on_host(flag) for key, flag in flags.items()}
    if on_bad_rows == "raise":
        found = _first_bad(flags)
        for (rule, variable), (count, first) in found.items():
            if count:
                label = ds[dim].values[first] if dim in ds.coords else None
                raise InputError(QC_DESCRIPTIONS[rule], store=store, variable=variable,
                                 instrument=instrument, index=first, label=label, count=count)
        return ds
    out = ds.copy()
    merged: dict[str, xr.DataArray] = {}
    for (rule, _variable), flag in flags.items():
        merged[rule] = flag if rule not in merged else (merged[rule] | flag)
    excluded = None
    for rule, flag in merged.items():
        out[rule] = flag.assign_attrs(long_name=QC_DESCRIPTIONS[rule], units="1")
        excluded = flag if excluded is None else (excluded | flag)
    if excluded is None:
        excluded = xr.zeros_like(ds[dim], dtype=bool)
    out["qc_row_excluded"] = excluded.assign_attrs(
        long_name="row left out of every computation (union of the qc_* flags)", units="1")
    return out


# --------------------------------------------------------------------------- book


def book_row_flags(ds: xr.Dataset) -> dict[tuple[str, str], xr.DataArray]:
    """Lazy per-snapshot flags, keyed by (rule, variable). Works on NumPy, Dask or CuPy data."""
    flags: dict[tuple[str, str], xr.DataArray] = {}
    for side in ("bid", "ask"):
        price, size = ds[f"{side}_price"], ds[f"{side}_size"]
        flags[("qc_bad_size", f"{side}_size")] = (
            size.isnull() | (size < 0) | ((size > 0) & price.isnull())
        ).any("level")
        flags[("qc_bad_price", f"{side}_price")] = ((price <= 0) | np.isinf(price)).any("level")
        upper, lower = price.isel(level=slice(None, -1)), price.isel(level=slice(1, None))
        upper = upper.drop_vars("level", errors="ignore")
        lower = lower.drop_vars("level", errors="ignore")
        wrong_order = (lower >= upper) if side == "bid" else (lower <= upper)
        gap = upper.isnull() & lower.notnull()
        flags[("qc_ladder", f"{side}_price")] = (wrong_order | gap).any("level")
    best_bid = ds["bid_price"].isel(level=0, drop=True)
    best_ask = ds["ask_price"].isel(level=0, drop=True)
    flags[("qc_crossed", "bid_price/ask_price")] = best_bid >= best_ask
    return flags


def time_order_flags(time: np.ndarray) -> np.ndarray:
    """True where time is NaT or earlier than the running maximum of the times before it."""
    t = np.asarray(time).astype("datetime64[ns]").view("i8")
    nat = t == np.iinfo(np.int64).min
    filled = np.where(nat, np.iinfo(np.int64).min, t)
    running = np.maximum.accumulate(filled)
    earlier = np.zeros(t.shape, dtype=bool)
    earlier[1:] = t[1:] < running[:-1]
    return nat | earlier


def validate_book_dataset(
    ds: xr.Dataset,
    *,
    store: str | None = None,
    instrument: str | None = None,
    on_bad_rows: OnBadRows = "raise",
) -> xr.Dataset:
    """Validate one instrument's book dataset (dims time, level).

    Returns ``ds`` unchanged (``raise``) or with ``qc_*`` (time) flags (``flag``).
    """
    _check_on_bad_rows(on_bad_rows)
    check_structure(ds, BOOK_VARS, store=store, instrument=instrument)
    check_structure(ds, BOOK_COORDS, store=store, instrument=instrument)
    flags = book_row_flags(ds)
    time_bad = time_order_flags(ds["time"].values)
    flags[("qc_time_order", "time")] = xr.DataArray(time_bad, dims=("time",),
                                                    coords={"time": ds["time"]})
    return _raise_or_flag(ds, flags, "time", on_bad_rows, store=store, instrument=instrument)


# ---------------------------------------------------------------------- market


def validate_market(ds: xr.Dataset, *, store: str | None = None) -> xr.Dataset:
    """Validate market parameters. Market data is small and shared by every account, so any
    problem raises (there is no row to leave out)."""
    check_structure(ds, MARKET_ASSET_VARS, store=store)
    check_structure(ds, MARKET_INSTRUMENT_VARS, store=store)
    check_structure(ds, MARKET_BRACKET_VARS, store=store)
    ds = ds.load()
    assets = [str(a) for a in ds["asset"].values]
    instruments = [str(i) for i in ds["instrument"].values]

    def bad(problem, variable, index, labels, instrument=None, count=None):
        raise InputError(problem, store=store, variable=variable, instrument=instrument,
                         index=int(index), label=labels[int(index)], count=count)

    for name, test, problem in (
        ("price", lambda v: ~np.isfinite(v) | (v <= 0), "asset price is NaN, infinite or <= 0"),
        ("haircut", lambda v: ~np.isfinite(v) | (v < 0) | (v > 1), "haircut outside [0, 1]"),
        ("beta", lambda v: ~np.isfinite(v), "beta is NaN or infinite"),
    ):
        wrong = test(ds[name].values.astype(float))
        if wrong.any():
            bad(problem, name, np.argmax(wrong), assets, count=int(wrong.sum()))

    kind = as_str(ds["kind"].values)
    for i, k in enumerate(kind.tolist()):
        if k not in INSTRUMENT_KINDS:
            bad(f"unknown instrument kind {k!r} (expected one of {INSTRUMENT_KINDS})", "kind", i,
                instruments, instrument=instruments[i])
    underlying = as_str(ds["underlying"].values)
    for i, u in enumerate(underlying.tolist()):
        if u not in assets:
            bad(f"underlying asset {u!r} is not in the market's assets", "underlying", i,
                instruments, instrument=instruments[i])
    mark = ds["mark_price"].values.astype(float)
    wrong = ~np.isfinite(mark) | (mark <= 0)
    if wrong.any():
        i = int(np.argmax(wrong))
        bad("mark price is NaN, infinite or <= 0", "mark_price", i, instruments,
            instrument=instruments[i], count=int(wrong.sum()))

    options = kind == "option"
    if options.any():
        for name in ("strike", "expiry", "call_put", "implied_vol"):
            if name not in ds:
                raise SchemaError(f"options present but variable {name!r} is missing",
                                  store=store, variable=name)
        strike = ds["strike"].values.astype(float)
        vol = ds["implied_vol"].values.astype(float)
        expiry = ds["expiry"].values
        right = as_str(ds["call_put"].values)
        for i in np.flatnonzero(options):
            inst = instruments[i]
            if not (np.isfinite(strike[i]) and strike[i] > 0):
                bad("option strike is NaN or <= 0", "strike", i, instruments, instrument=inst)
            if not (np.isfinite(vol[i]) and vol[i] > 0):
                bad("option implied_vol is NaN or <= 0", "implied_vol", i, instruments, instrument=inst)
            if np.isnat(expiry[i]):
                bad("option expiry is NaT", "expiry", i, instruments, instrument=inst)
            if right[i] not in OPTION_RIGHTS:
                bad(f"call_put is {str(right[i])!r}, expected 'call' or 'put'", "call_put", i,
                    instruments, instrument=inst)

    floor = ds["notional_floor"].values.astype(float)
    mmr = ds["mmr"].values.astype(float)
    amount = ds["maintenance_amount"].values.astype(float)
    for i, inst in enumerate(instruments):
        used = np.isfinite(floor[i])
        if kind[i] == "option":
            continue
        if not used.any():
            bad("no maintenance bracket", "notional_floor", i, instruments, instrument=inst)
        n_used = int(used.sum())
        if not used[:n_used].all():
            bad("unused (NaN) bracket before a used one", "notional_floor", i, instruments,
                instrument=inst)
        f = floor[i, :n_used]
        if f[0] != 0:
            bad(f"first bracket floor is {f[0]}, expected 0", "notional_floor", i, instruments,
                instrument=inst)
        if n_used > 1 and not (np.diff(f) > 0).all():
            j = int(np.argmax(~(np.diff(f) > 0))) + 1
            raise InputError("bracket floors not increasing", store=store,
                             variable="notional_floor", instrument=inst, index=j,
                             label=f"bracket {j}")
        m = mmr[i, :n_used]
        if not (np.isfinite(m) & (m >= 0) & (m < 1)).all():
            j = int(np.argmax(~(np.isfinite(m) & (m >= 0) & (m < 1))))
            raise InputError("mmr NaN or outside [0, 1)", store=store, variable="mmr",
                             instrument=inst, index=j, label=f"bracket {j}")
        a = amount[i, :n_used]
        if not np.isfinite(a).all():
            j = int(np.argmax(~np.isfinite(a)))
            raise InputError("maintenance_amount NaN", store=store, variable="maintenance_amount",
                             instrument=inst, index=j, label=f"bracket {j}")
    return ds


# -------------------------------------------------------------------- positions


def validate_positions(
    ds: xr.Dataset,
    market: xr.Dataset | None = None,
    *,
    store: str | None = None,
    on_bad_rows: OnBadRows = "raise",
) -> xr.Dataset:
    """Validate a positions dataset (dims account, asset, instrument), against ``market``
    when given (unknown instruments and assets). Returns it with ``qc_*`` (account) flags
    under ``on_bad_rows="flag"``."""
    _check_on_bad_rows(on_bad_rows)
    check_structure(ds, POSITION_VARS, store=store)
    flags: dict[tuple[str, str], xr.DataArray] = {}
    position, balance = ds["position"], ds["balance"]
    isolated_margin = ds["isolated_margin"]
    if market is not None:
        for dim, variable, rule, what in (("instrument", "position", "qc_unknown_instrument",
                                           "position in an instrument"),
                                          ("asset", "balance", "qc_unknown_asset", "balance in an asset")):
            known = set(as_str(market[dim].values).tolist())
            labels = as_str(ds[dim].values).tolist()
            unknown = [i for i, name in enumerate(labels) if name not in known]
            if not unknown:
                continue
            if on_bad_rows == "raise":
                i = unknown[0]
                raise InputError(f"{what} absent from the market", store=store, variable=variable,
                                 instrument=labels[i], index=i, label=f"{dim} {labels[i]!r}",
                                 count=len(unknown))
            flags[(rule, variable)] = (ds[variable].isel({dim: unknown}) != 0).any(dim)
    flags[("qc_nan_value", "balance")] = balance.isnull().any("asset")
    flags[("qc_nan_value", "position")] = position.isnull().any("instrument")
    flags[("qc_nan_value", "isolated_margin")] = isolated_margin.isnull().any("instrument")
    entry = ds["entry_price"]
    flags[("qc_bad_entry_price", "entry_price")] = (
        (position != 0) & (entry.isnull() | (entry <= 0))).any("instrument")
    mode = ds["margin_mode"]
    is_cross, is_isolated = mode == MARGIN_MODES[0], mode == MARGIN_MODES[1]
    flags[("qc_bad_margin_mode", "margin_mode")] = ~(is_cross | is_isolated)
    # margin_mode is always on the host; the numbers may be on the GPU
    flags[("qc_isolated_margin_on_cross", "isolated_margin")] = (
        is_cross & on_host((isolated_margin != 0).any("instrument") & isolated_margin.notnull().all("instrument")))
    flags[("qc_bad_isolated_margin", "isolated_margin")] = (isolated_margin < 0).any("instrument")
    return _raise_or_flag(ds, flags, "account", on_bad_rows, store=store, instrument=None)


def without_flagged_rows(ds: xr.Dataset) -> xr.Dataset:
    """A book without the rows ``qc_row_excluded`` marks, and without the qc flags: rows left
    out are not snapshots at all (nor anyone's predecessor)."""
    if "qc_row_excluded" in ds:
        ds = ds.isel(time=np.flatnonzero(~np.asarray(ds["qc_row_excluded"].values)))
    return ds.drop_vars([v for v in ds.data_vars if v.startswith("qc_")])
