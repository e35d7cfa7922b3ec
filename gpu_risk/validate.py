"""Validation of book, positions and market datasets against the SPEC's bad-input rules.

Every rule either raises :class:`~gpu_risk.errors.InputError` naming the store,
variable, instrument and first offending index (``on_bad_rows="raise"``, the
default) or, with ``on_bad_rows="flag"``, adds boolean ``qc_*`` variables that
mark the rows left out of every computation (``qc_row_excluded`` is their union).
Structural problems (a missing variable, wrong dims or dtype) always raise: there
is no row to leave out.
"""

from __future__ import annotations

from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .backend import is_cupy, on_host
from .errors import InputError, SchemaError
from .kernels.qc import BOOK_RULE_BITS, MAX_BOOK_PRICE, MAX_BOOK_SIZE, book_rules_cpu
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

# Bounds beyond which float64 sums and products of margin arithmetic overflow: a market
# price above MAX_PRICE, an amount (balance, position, margin) beyond MAX_AMOUNT
MAX_PRICE = MAX_BOOK_PRICE
MAX_AMOUNT = 1e30

# Bump when a rule changes: stamps (in memory and in stores) of another version are not
# trusted, so data validated under older rules is validated again.
QC_RULES_VERSION = 3
VALIDATED_ATTR = "gpu_risk_validated"
BOOK_ARRAYS = ("bid_price", "ask_price", "bid_size", "ask_size")

QC_DESCRIPTIONS = {
    "qc_bad_size": "a size is NaN, infinite, negative or above 1e18, or positive at an empty level",
    "qc_bad_price": "a price is zero, negative, infinite or above 1e15",
    "qc_ladder": "price ladder not strictly monotone, or a filled level below an empty one",
    "qc_crossed": "crossed book: best bid >= best ask",
    "qc_time_order": "time is NaT or earlier than a previous snapshot",
    "qc_unknown_instrument": "holds a position in an instrument absent from the market",
    "qc_unknown_asset": "holds a balance in an asset absent from the market",
    "qc_nan_value": "NaN, infinite or beyond +-1e30 balance, position or isolated margin",
    "qc_bad_entry_price": "open position with NaN, infinite, non-positive or above 1e15 entry price",
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


def _data_token(ds: xr.Dataset, names) -> str:
    """Identifies the data behind ``names``: a Dask array by its graph name (any change to
    the data makes a new name), an in-memory array by its buffer address, shape and strides;
    the time axis by its length and end points."""
    parts = []
    for name in names:
        data = ds[name].data
        if isinstance(data, da.Array):
            parts.append(data.name)
        else:
            iface = getattr(data, "__cuda_array_interface__", None) or np.asarray(data).__array_interface__
            parts.append(f"{iface['data'][0]:x}{tuple(data.shape)}{iface.get('strides')}")
    if "time" in ds.indexes:
        t = ds.indexes["time"]
        parts.append(f"t{len(t)}:{t[0] if len(t) else ''}:{t[-1] if len(t) else ''}")
    return "|".join(parts)


def _stamp_value(ds: xr.Dataset, kind: str, names) -> str:
    if kind == "market":  # small and in memory: its content, hashed
        token = dask.base.tokenize({name: np.asarray(ds[name].values) for name in names})
    else:
        token = _data_token(ds, names)
    return f"{kind}/v{QC_RULES_VERSION}/{token}"


def _stamped_names(ds: xr.Dataset, kind: str) -> list[str]:
    if kind == "book":
        return list(BOOK_ARRAYS)
    if kind.startswith("positions"):
        return [name for name in POSITION_VARS if name in ds]
    return sorted(str(name) for name in ds.variables)  # market: every variable


def stamp_validated(ds: xr.Dataset, kind: str) -> xr.Dataset:
    """Record on ``ds`` (in place; returned) that its data passed validation as ``kind``
    (``book``, ``positions`` or ``market``), so that later families do not validate it
    again. The stamp names the data it covers: a dataset whose data changed afterwards
    (any new Dask graph, another buffer) no longer matches it and is validated again;
    NumPy data modified in place is not detected."""
    ds.attrs[VALIDATED_ATTR] = _stamp_value(ds, kind, _stamped_names(ds, kind))
    return ds


def is_validated(ds: xr.Dataset, kind: str) -> bool:
    """Whether ``ds`` carries a validation stamp for exactly its current data, or flags
    (``qc_row_excluded``) from a validation in flag mode."""
    if "qc_row_excluded" in ds:
        return True
    stamp = ds.attrs.get(VALIDATED_ATTR)
    if not isinstance(stamp, str):
        return False
    try:
        return stamp == _stamp_value(ds, kind, _stamped_names(ds, kind))
    except (KeyError, IndexError):
        return False


def _first_bad(flags: dict[tuple[str, str], xr.DataArray]) -> dict[tuple[str, str], tuple[int, int]]:
    """(count, first index) of every flag, computed in one pass over the data."""
    keys = [k for k in flags if flags[k].size]  # nothing to find in an empty dataset
    counts = [flags[k].data.sum() for k in keys]
    firsts = [flags[k].data.argmax() for k in keys]
    results = dask.compute(*counts, *firsts)
    n = len(keys)
    return {k: (int(results[i]), int(results[n + i])) for i, k in enumerate(keys)}


def _raise_or_flag(
    ds: xr.Dataset,
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
    return _with_flags(ds, flags, dim)


def _with_flags(ds: xr.Dataset, flags: dict[tuple[str, str], xr.DataArray], dim: str) -> xr.Dataset:
    """``ds`` with one ``qc_*`` variable per rule and their union ``qc_row_excluded``."""
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
            size.isnull() | (size < 0) | (size > MAX_BOOK_SIZE) | ((size > 0) & price.isnull())
        ).any("level")
        flags[("qc_bad_price", f"{side}_price")] = (
            (price <= 0) | (price > MAX_BOOK_PRICE) | np.isinf(price)).any("level")
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


def _rules_block(bid_price, ask_price, bid_size, ask_size):
    out = np.empty(bid_price.shape[0], dtype=np.uint8)
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (bid_price, ask_price, bid_size, ask_size)]
    return book_rules_cpu(*arrays, out)


def book_rule_mask(ds: xr.Dataset) -> np.ndarray:
    """Per snapshot, the bit mask of broken rules (``kernels.qc.BOOK_RULE_BITS``), computed
    in one pass: one task per chunk of a Dask-backed book."""
    arrays = [ds[name].transpose("time", "level").data for name in BOOK_ARRAYS]
    if not any(isinstance(a, da.Array) for a in arrays):
        return _rules_block(*arrays)
    arrays = [a if isinstance(a, da.Array) else da.from_array(a, chunks=(-1, -1)) for a in arrays]
    time_chunks = arrays[0].chunks[0]
    arrays = [a.rechunk((time_chunks, -1)) for a in arrays]
    mask = da.map_blocks(_rules_block, *arrays, drop_axis=1, dtype=np.uint8,
                         meta=np.empty((0,), dtype=np.uint8))
    return np.asarray(mask.compute())


def _book_flags_fused(ds: xr.Dataset) -> dict[tuple[str, str], xr.DataArray]:
    mask = book_rule_mask(ds)
    coords = {"time": ds["time"]} if "time" in ds.coords else None
    return {key: xr.DataArray((mask & bit) != 0, dims=("time",), coords=coords)
            for key, bit in BOOK_RULE_BITS.items()}


def time_order_flags(time: np.ndarray) -> np.ndarray:
    """True where time is NaT or earlier than the running maximum of the times before it."""
    t = np.asarray(time).astype("datetime64[ns]").view("i8")
    nat = t == np.iinfo(np.int64).min
    filled = np.where(nat, np.iinfo(np.int64).min, t)
    running = np.maximum.accumulate(filled)
    earlier = np.zeros(t.shape, dtype=bool)
    earlier[1:] = t[1:] < running[:-1]
    return nat | earlier


def book_qc_summary(ds: xr.Dataset) -> dict:
    """What a store records of one validated book day (``gpu_risk_qc``): the rules version,
    its rows, how many break a rule and the last row that breaks none (-1: none), so that
    opening it later, and the next day's OFI predecessor, need not validate it again."""
    check_structure(ds, BOOK_VARS, store=ds.attrs.get("store"))
    mask = book_rule_mask(ds) != 0
    mask |= time_order_flags(ds["time"].values)
    good = np.flatnonzero(~mask)
    summary: dict[str, Any] = {"rules": QC_RULES_VERSION, "rows": int(mask.size), "bad_rows": int(mask.sum()),
               "last_valid_row": int(good[-1]) if good.size else -1}
    if good.size:
        summary["last_valid"] = last_valid_record(ds, int(good[-1]))
    return summary


def last_valid_record(ds: xr.Dataset, row: int) -> dict:
    """Row ``row`` of a book day as its summary records it (``last_valid``): the next day's
    OFI predecessor is then read from the day's metadata, not from its chunks. Its time
    in ns, each book array's levels (JSON numbers, which give the same doubles back;
    null for NaN) and the level coordinate."""
    time = np.asarray(ds["time"].values[row]).astype("datetime64[ns]").view(np.int64)
    return {"row": row, "time": int(time),
            **{name: [None if v != v else float(v) for v in np.asarray(ds[name].values[row], dtype=np.float64)]
               for name in BOOK_VARS},
            "level": [int(v) for v in ds["level"].values], "level_dtype": ds["level"].dtype.name}


def is_current_summary(summary, rows: int) -> bool:
    """Whether a recorded ``gpu_risk_qc`` was made under the current rules for ``rows`` rows."""
    return (isinstance(summary, dict) and summary.get("rules") == QC_RULES_VERSION
            and summary.get("rows") == rows)


def is_clean_summary(summary, rows: int) -> bool:
    """Whether a recorded ``gpu_risk_qc`` says a day of ``rows`` rows breaks no rule under
    the current rules."""
    return is_current_summary(summary, rows) and summary.get("bad_rows") == 0


def _all_clear(ds: xr.Dataset, dim: str, keys) -> xr.Dataset:
    """``ds`` with the ``qc_*`` flags of ``keys`` all false along ``dim`` (flag mode on data
    known to be clean: the variables a full validation would add)."""
    zeros = xr.DataArray(np.zeros(ds.sizes[dim], dtype=bool), dims=(dim,), coords={dim: ds[dim]})
    return _with_flags(ds, dict.fromkeys(keys, zeros), dim)


def no_flags(ds: xr.Dataset) -> xr.Dataset:
    """A book with every ``qc_*`` flag all false (flag mode on data known to be clean)."""
    return _all_clear(ds, "time", list(BOOK_RULE_BITS) + [("qc_time_order", "time")])


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
    # the fused kernel on host data; the reference expressions on the GPU
    on_gpu = any(is_cupy(ds[name].data) for name in BOOK_ARRAYS)
    flags = book_row_flags(ds) if on_gpu else _book_flags_fused(ds)
    time_bad = time_order_flags(ds["time"].values)
    flags[("qc_time_order", "time")] = xr.DataArray(time_bad, dims=("time",),
                                                    coords={"time": ds["time"]})
    out = _raise_or_flag(ds, flags, "time", on_bad_rows, store=store, instrument=instrument)
    if out is ds:  # raise mode, nothing raised: a copy carries the stamp, not the caller's ds
        out = ds.copy()
    return stamp_validated(out, "book")


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
        ("price", lambda v: ~(v > 0) | (v > MAX_PRICE), "asset price is NaN, infinite, <= 0 or above 1e15"),
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
    wrong = ~(mark > 0) | (mark > MAX_PRICE)
    if wrong.any():
        i = int(np.argmax(wrong))
        bad("mark price is NaN, infinite, <= 0 or above 1e15", "mark_price", i, instruments,
            instrument=instruments[i], count=int(wrong.sum()))

    if "depth_exponent" in ds:  # the power depth model's gamma: NaN (not fitted) or in (0, 10]
        gamma = ds["depth_exponent"].values.astype(float)
        wrong = ~np.isnan(gamma) & ~((gamma > 0) & (gamma <= 10))
        if wrong.any():
            i = int(np.argmax(wrong))
            bad("depth_exponent must be NaN (not fitted) or in (0, 10]", "depth_exponent", i, instruments,
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
        for i in map(int, np.flatnonzero(options)):
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
        # MM = notional x mmr - amount grows with the notional inside a bracket (mmr >= 0):
        # it is lowest at the bracket's floor, where it must not be negative (SPEC)
        at_floor = f * m - a
        if (at_floor < 0).any():
            j = int(np.argmax(at_floor < 0))
            raise InputError(f"maintenance margin negative at the floor of bracket {j}: {f[j]:g} x {m[j]:g} - "
                             f"{a[j]:g} = {at_floor[j]:g}", store=store, variable="maintenance_amount",
                             instrument=inst, index=j, label=f"bracket {j}")
    return stamp_validated(ds, "market")


# -------------------------------------------------------------------- positions


def _unknown_labels(ds: xr.Dataset, market: xr.Dataset, dim: str) -> list[int]:
    """Indices of ``ds``'s ``dim`` labels (instruments or assets) the market lacks."""
    known = set(as_str(market[dim].values).tolist())
    return [i for i, name in enumerate(as_str(ds[dim].values).tolist()) if name not in known]


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
            labels = as_str(ds[dim].values).tolist()
            unknown = _unknown_labels(ds, market, dim)
            if not unknown:
                continue
            if on_bad_rows == "raise":
                i = unknown[0]
                raise InputError(f"{what} absent from the market", store=store, variable=variable,
                                 instrument=labels[i], index=i, label=f"{dim} {labels[i]!r}",
                                 count=len(unknown))
            flags[(rule, variable)] = (ds[variable].isel({dim: unknown}) != 0).any(dim)
    # SPEC: NaN or infinite values are bad (an infinite position gave SPAN 0 and a ratio of
    # inf; an infinite balance made every shortfall infinite); so are amounts whose notional
    # would overflow float64 (|x| above MAX_AMOUNT, times a price up to MAX_PRICE, squared)
    flags[("qc_nan_value", "balance")] = (~(abs(balance) <= MAX_AMOUNT)).any("asset")
    flags[("qc_nan_value", "position")] = (~(abs(position) <= MAX_AMOUNT)).any("instrument")
    flags[("qc_nan_value", "isolated_margin")] = (~(abs(isolated_margin) <= MAX_AMOUNT)).any("instrument")
    entry = ds["entry_price"]
    flags[("qc_bad_entry_price", "entry_price")] = (
        (position != 0) & ~((entry > 0) & (entry <= MAX_PRICE))).any("instrument")
    mode = ds["margin_mode"]
    is_cross, is_isolated = mode == MARGIN_MODES[0], mode == MARGIN_MODES[1]
    flags[("qc_bad_margin_mode", "margin_mode")] = ~(is_cross | is_isolated)
    # margin_mode is always on the host; the numbers may be on the GPU
    flags[("qc_isolated_margin_on_cross", "isolated_margin")] = (
        is_cross & on_host((isolated_margin != 0).any("instrument") & isolated_margin.notnull().all("instrument")))
    flags[("qc_bad_isolated_margin", "isolated_margin")] = (isolated_margin < 0).any("instrument")
    out = _raise_or_flag(ds, flags, "account", on_bad_rows, store=store, instrument=None)
    # checked against a market or not: a family given a market trusts only the former
    return stamp_validated(out.copy() if out is ds else out,
                           "positions+market" if market is not None else "positions")


POSITION_ROW_RULES = ("qc_nan_value", "qc_bad_entry_price", "qc_bad_margin_mode",
                      "qc_isolated_margin_on_cross", "qc_bad_isolated_margin")


def positions_qc_summary(ds: xr.Dataset) -> dict:
    """What a positions store records of one validated as-of date: the rules version, its
    accounts and how many break a row rule (market checks are made when opening, against
    the market given then)."""
    flagged = validate_positions(ds, on_bad_rows="flag")
    bad = int(np.asarray(flagged["qc_row_excluded"].values).sum())
    return {"rules": QC_RULES_VERSION, "rows": int(ds.sizes["account"]), "bad_rows": bad}


def positions_without_bad_rows(ds: xr.Dataset, market: xr.Dataset | None, *,
                               on_bad_rows: OnBadRows) -> xr.Dataset | None:
    """Positions recorded clean when written: only the checks against ``market`` remain,
    and they read no data unless the positions name instruments or assets the market
    lacks (then None: validate in full). Stamped as validated; in flag mode with all-false
    flags, as a full validation would return them."""
    if market is not None and any(_unknown_labels(ds, market, dim) for dim in ("instrument", "asset")):
        return None
    out = _all_clear(ds, "account", [(rule, "") for rule in POSITION_ROW_RULES]) if on_bad_rows == "flag" \
        else ds.copy()
    return stamp_validated(out, "positions+market" if market is not None else "positions")


def ensure_book(ds: xr.Dataset, *, instrument: str | None = None) -> xr.Dataset:
    """``ds`` itself when validated (stamped or flagged), else validated (raise mode)."""
    if is_validated(ds, "book"):
        return ds
    return validate_book_dataset(ds, store=ds.attrs.get("store"), instrument=instrument)


def ensure_market(market: xr.Dataset) -> xr.Dataset:
    """``market`` itself when stamped as validated, else validated."""
    return market if is_validated(market, "market") else validate_market(market, store=market.attrs.get("store"))


def ensure_positions(positions: xr.Dataset, market: xr.Dataset | None = None) -> xr.Dataset:
    """``positions`` itself when validated (stamped or flagged), else validated (raise)."""
    if is_validated(positions, "positions+market") or (
            market is None and is_validated(positions, "positions")):
        return positions
    return validate_positions(positions, market, store=positions.attrs.get("store"))


def without_flagged_rows(ds: xr.Dataset) -> xr.Dataset:
    """A book without the rows ``qc_row_excluded`` marks, and without the qc flags: rows left
    out are not snapshots at all (nor anyone's predecessor)."""
    if "qc_row_excluded" in ds:
        ds = ds.isel(time=np.flatnonzero(~np.asarray(ds["qc_row_excluded"].values)))
    return ds.drop_vars([v for v in ds.data_vars if str(v).startswith("qc_")])
