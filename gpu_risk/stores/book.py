"""The book store: each instrument's snapshots (time, level), one group per day, or with
the instrument-arrays layout (:mod:`gpu_risk.stores.book_arrays`) one array per variable
over all days with a day index. Readers and writers here handle both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ..coding import (
    decode_ticked,
    encode_ticked,
    encode_with,
    tick_attrs,
)
from ..errors import InputError
from ..schema import (
    BOOK_OPTIONAL_VARS,
    BOOK_VARS,
    describe,
)
from ..validate import (
    QC_RULES_VERSION,
    OnBadRows,
    book_qc_summary,
    is_clean_summary,
    is_current_summary,
    last_valid_record,
    no_flags,
    stamp_validated,
    validate_book_dataset,
    without_flagged_rows,
)
from . import book_arrays
from .book_arrays import INSTRUMENT_ARRAYS, is_instrument_arrays, store_layout
from .days import (
    BOOK_CHUNK_ROWS,
    QC_ATTR,
    PathLike,
    RegionWriter,
    _lazy_template,
    _open_root,
    _record_qc,
    _with_attrs,
    check_manifest,
    check_within_day,
    child_groups,
    complete_days,
    day_key,
    ensure_store,
    group_attrs,
    init_store,
    is_sealed,
    open_day_dataset,
    shared_day_attrs,
    write_day_dataset,
    write_day_direct,
)


def _check_instrument_name(name: str) -> None:
    """An instrument names a group of the store: not empty, no path separator or leading
    '.', not Zarr's own metadata file name, no control characters."""
    if (not name or "/" in name or "\\" in name or name.startswith(".") or name == "zarr.json"
            or any(ord(c) < 32 for c in name)):
        raise ValueError(f"instrument name {name!r} must be non-empty, without '/', '\\', a leading '.' "
                         "or control characters, and not 'zarr.json'")


def write_book(ds: xr.Dataset, path: PathLike, instrument: str,
               chunk_rows: int = BOOK_CHUNK_ROWS) -> list[str]:
    """Write one instrument's snapshots, split into one complete group per UTC day.

    Returns the days written. The dataset must pass :func:`validate_book_dataset`.
    """
    _check_instrument_name(instrument)
    validate_book_dataset(ds, store=str(path), instrument=instrument)
    init_store(path, "book")
    if _arrays_layout(path, instrument):
        return book_arrays.append_days(_with_attrs(ds, BOOK_VARS).load(), path, instrument, chunk_rows)
    day = ds["time"].values.astype("datetime64[D]")
    written = []
    for d in np.unique(day):
        part = _with_attrs(ds.isel(time=np.flatnonzero(day == d)), BOOK_VARS)
        key = day_key(d)
        part.attrs.update(instrument=instrument, date=key)
        rows = part.sizes["time"]  # validated above: every row is clean
        part.attrs[QC_ATTR] = {"rules": QC_RULES_VERSION, "rows": rows, "bad_rows": 0,
                               "last_valid_row": rows - 1, "last_valid": last_valid_record(part, rows - 1)}
        part = encode_ticked(part.load())[0]  # exact int32 ticks where the values allow
        write_day_dataset(part, path, f"{instrument}/{key}", {"time": chunk_rows})
        written.append(key)
    return written


def book_writer(path: PathLike, instrument: str, date: Any, time: np.ndarray, levels: int,
                chunk_rows: int = BOOK_CHUNK_ROWS, extra_attrs: dict | None = None,
                optional_vars: tuple[str, ...] = (), suffix: str = "",
                ticks: dict[str, tuple[float, float]] | None = None) -> RegionWriter | book_arrays.DayAppender:
    """A :class:`RegionWriter` for one instrument-day whose snapshot times are known;
    ``optional_vars`` names variables of ``BOOK_OPTIONAL_VARS`` the slabs will carry too;
    ``suffix`` writes a sibling group (``<day><suffix>``) that :func:`replace_day` swaps in;
    ``ticks`` maps book variables to exact tick encodings ``(divisor, multiplier)``
    (:mod:`gpu_risk.coding`): their slabs are stored as int32 ticks, and a value off the
    grid raises instead of being rounded."""
    ticks = {k: v for k, v in (ticks or {}).items() if v is not None}
    _check_instrument_name(instrument)
    init_store(path, "book")
    if _arrays_layout(path, instrument):  # a day written again is appended anew: no sibling group
        return book_arrays.DayAppender(path, instrument, date, time, levels, chunk_rows, extra_attrs,
                                       optional_vars, ticks)
    key = day_key(date)
    sizes = {"time": len(time), "level": levels}
    variables = {name: (var.dims, np.dtype("int32"), describe(var) | tick_attrs(ticks[name]))
                 if name in ticks else (var.dims, np.dtype("float64"), describe(var))
                 for name, var in BOOK_VARS.items()}
    for name in optional_vars:
        var = BOOK_OPTIONAL_VARS[name]
        variables[name] = (var.dims, np.dtype("float64"), describe(var))
    coords = {"time": ("time", np.asarray(time, dtype="datetime64[ns]")),
              "level": ("level", np.arange(1, levels + 1, dtype=np.int16))}
    template = _lazy_template(coords, variables, sizes, {"time": chunk_rows})
    template.attrs.update(instrument=instrument, date=key, **(extra_attrs or {}))
    encode = (lambda slab: encode_with(slab, ticks, where=f" of {instrument} {key}")) if ticks else None
    return RegionWriter(template, path, f"{instrument}/{key}{suffix}", "time", chunk_rows,
                        encode=encode, before_complete=record_book_qc)


# whole days written by gpu_risk's own writer (stores/direct.py) instead of xarray's (the same
# stores; the tests compare the two)
DIRECT_WRITES = True


def write_book_day_whole(path: PathLike, instrument: str, date: Any, time: np.ndarray, block: np.ndarray,
                         chunk_rows: int = BOOK_CHUNK_ROWS, extra_attrs: dict | None = None,
                         extras: dict[str, np.ndarray] | None = None, suffix: str = "",
                         ticks: dict[str, tuple[float, float]] | None = None) -> None:
    """One instrument-day held in memory (``block``: (4, time, level) in the order
    bid_price, bid_size, ask_price, ask_size; ``extras``: optional variables by name),
    written in one pass with what :func:`book_writer` would write for it (the same arrays,
    encodings, attributes and validation summary): a day that fits in memory need not pay
    for a writer's empty template and its region writes (0.1-0.2 s a day)."""
    _check_instrument_name(instrument)
    ensure_store(path, "book")
    key = day_key(date)
    levels = block.shape[2]
    ds = xr.Dataset({name: (("time", "level"), block[i], describe(BOOK_VARS[name]))
                     for i, name in enumerate(("bid_price", "bid_size", "ask_price", "ask_size"))},
                    coords={"time": ("time", np.asarray(time, dtype="datetime64[ns]")),
                            "level": ("level", np.arange(1, levels + 1, dtype=np.int16))})
    for name, values in (extras or {}).items():
        ds[name] = ("time", values, describe(BOOK_OPTIONAL_VARS[name]))
    ds.attrs.update(instrument=instrument, date=key, **(extra_attrs or {}))
    ds.attrs[QC_ATTR] = book_qc_summary(ds)  # on the values as they will read back (ticks are exact)
    ticks = {k: v for k, v in (ticks or {}).items() if v is not None}
    if ticks:
        ds = encode_with(ds, ticks, where=f" of {instrument} {key}")
        for name, spec in ticks.items():
            ds[name].attrs.update(tick_attrs(spec))
    group = f"{instrument}/{key}{suffix}"
    if not (DIRECT_WRITES and write_day_direct(ds, path, group, {"time": chunk_rows})):
        write_day_dataset(ds, path, group, {"time": chunk_rows})


def record_book_qc(path: PathLike, group: str) -> dict:
    """Validate a written book day in one pass and record the summary on its group."""
    return _record_qc(path, group, book_qc_summary)


def book_instruments(path: PathLike) -> list[str]:
    _open_root(path, "book")
    return child_groups(path)


def _arrays_layout(path: PathLike, instrument: str) -> bool:
    """Whether ``instrument`` is (or, new, will be) stored as instrument arrays."""
    if is_instrument_arrays(path, instrument):
        return True
    return not (Path(str(path)) / instrument).exists() and store_layout(path) == INSTRUMENT_ARRAYS


def instrument_days(path: PathLike, instrument: str, start: Any = None, end: Any = None) -> list[str]:
    """The complete days of one instrument in [start, end], whatever its layout."""
    if is_instrument_arrays(path, instrument):
        return book_arrays.instrument_days(path, instrument, start, end)
    return complete_days(path, instrument, start, end)


def has_book_day(path: PathLike, instrument: str, date: Any) -> bool:
    """Whether the book store holds ``date`` of ``instrument`` complete."""
    key = day_key(date)
    try:
        return key in instrument_days(path, instrument, key, key)
    except (FileNotFoundError, KeyError):  # no such store or instrument yet
        return False


def book_days(path: PathLike) -> dict[str, list[str]]:
    """Complete days per instrument."""
    return {inst: instrument_days(path, inst) for inst in book_instruments(path)}


def open_book_instrument(path: PathLike, instrument: str, start: Any = None, end: Any = None,
                         *, validate: bool = True, on_bad_rows: OnBadRows = "raise",
                         chunks: Any = None, trust_recorded: bool = True) -> xr.Dataset:
    """One instrument's book over the complete days in [start, end], lazily (Dask).

    ``trust_recorded``: days whose recorded validation (written with the day) says they
    are clean are not read to be validated again; False validates every day (for stores
    edited by other tools since they were written)."""
    _open_root(path, "book")
    plain = bool(instrument) and "/" not in instrument and not instrument.startswith(".")
    if not plain or (not (Path(str(path)) / instrument).is_dir() and instrument not in child_groups(path)):
        raise InputError("instrument not in the book store", store=str(path), instrument=instrument)
    if is_instrument_arrays(path, instrument):
        return book_arrays.open_instrument(path, instrument, start, end, validate=validate,
                                           on_bad_rows=on_bad_rows, chunks=chunks, trust_recorded=trust_recorded)
    days = complete_days(path, instrument, start, end)
    if not days:
        raise InputError(f"no complete day in [{start}, {end}]", store=str(path), instrument=instrument)
    parts = [open_day_dataset(path, f"{instrument}/{d}", chunks) for d in days]
    sealed = [is_sealed(path, f"{instrument}/{d}", p.encoding) for d, p in zip(days, parts)]
    for d, p, ok in zip(days, parts, sealed):
        if not ok:  # changed since written: a chunk missing or truncated is named, not read
            check_manifest(path, f"{instrument}/{d}", p.encoding)
    offset = 0
    for d, p, ok in zip(days, parts, sealed):
        # a day whose recorded validation holds is in time order with no NaT
        in_order = ok and is_clean_summary(p.attrs.get(QC_ATTR), p.sizes["time"])
        check_within_day(p["time"].values, d, store=str(path), instrument=instrument, offset=offset,
                         in_order=in_order)
        offset += p.sizes["time"]
    # days validated when written (their recorded summary says clean) are not read again:
    # only the order of time across their boundaries is checked here
    clean = trust_recorded and all(sealed) and all(
        is_clean_summary(p.attrs.get(QC_ATTR), p.sizes["time"]) for p in parts) and all(
        a["time"].values[-1] <= b["time"].values[0]
        for a, b in zip(parts, parts[1:]) if a.sizes["time"] and b.sizes["time"])
    ds = parts[0] if len(parts) == 1 else xr.concat(
        parts, dim="time", data_vars="minimal", coords="minimal", compat="override", join="exact")
    ds.attrs = {"instrument": instrument, "days": days, "store": str(path),
                **shared_day_attrs([dict(p.attrs) for p in parts])}
    if validate and clean:
        return stamp_validated(no_flags(ds) if on_bad_rows == "flag" else ds, "book")
    if validate:
        ds = validate_book_dataset(ds, store=str(path), instrument=instrument, on_bad_rows=on_bad_rows)
    return ds


def last_valid_snapshot(path: PathLike, instrument: str, day: str) -> xr.Dataset | None:
    """The last snapshot of ``day`` that breaks no rule (one row), or None: read from the
    day's recorded validation summary where it has one, else by validating the day."""
    if is_instrument_arrays(path, instrument):
        return book_arrays.last_valid_snapshot(path, instrument, day)
    group = f"{instrument}/{day}"
    attrs = group_attrs(path, group)
    summary = attrs.get(QC_ATTR)
    rows = _time_rows(path, group)
    sealed = is_sealed(path, group, attrs)
    if not sealed:
        check_manifest(path, group, attrs)
    if not (is_current_summary(summary, rows) and sealed):
        kept = without_flagged_rows(validate_book_dataset(open_day_dataset(path, group), on_bad_rows="flag"))
        return kept.isel(time=[-1]) if kept.sizes["time"] else None
    assert isinstance(summary, dict)  # is_current_summary checked it
    row = int(summary["last_valid_row"])
    if row < 0:
        return None
    recorded = _from_record(summary.get("last_valid"), row)
    if recorded is not None:
        return recorded
    arrays = dict(zarr.open_group(str(path), path=group, mode="r", zarr_format=3).arrays())
    # one row read straight from Zarr (opening the day with xarray would load its time axis)
    one = xr.Dataset({"time": ("time", arrays["time"][row:row + 1])})
    time = xr.decode_cf(one.assign_coords(time=one["time"].assign_attrs(dict(arrays["time"].attrs))))["time"].values
    variables = {}
    for name in BOOK_VARS:
        raw = arrays[name][row:row + 1]
        variables[name] = (("time", "level"), decode_ticked(xr.Dataset(
            {name: (("time", "level"), raw, dict(arrays[name].attrs))}))[name].values)
    return xr.Dataset(variables, coords={"time": time, "level": arrays["level"][:]})


def _time_rows(path: PathLike, group: str) -> int:
    """The rows of a book day (its time array's length), from its metadata file where the
    store is a local directory (opening the array through zarr costs a millisecond or two)."""
    try:
        return int(json.loads((Path(str(path)) / group / "time" / "zarr.json").read_text())["shape"][0])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        array = zarr.open_group(str(path), path=group, mode="r", zarr_format=3)["time"]
        assert isinstance(array, zarr.Array)
        return int(array.shape[0])


def _from_record(record: Any, row: int) -> xr.Dataset | None:
    """The one-row snapshot a day's summary records (``validate.last_valid_record``), or
    None where it records none for ``row`` (stores written before it did)."""
    if not isinstance(record, dict) or record.get("row") != row:
        return None
    try:
        levels = np.array(record["level"], dtype=record["level_dtype"])
        variables = {name: (("time", "level"), np.array([[np.nan if v is None else v for v in record[name]]],
                                                       dtype=np.float64)) for name in BOOK_VARS}
        time = np.array([record["time"]], dtype=np.int64).view("datetime64[ns]")
        return xr.Dataset(variables, coords={"time": time, "level": levels})
    except (KeyError, TypeError, ValueError):
        return None


def open_book(path: PathLike, instruments: Iterable[str] | None = None, start: Any = None,
              end: Any = None, *, validate: bool = True, on_bad_rows: OnBadRows = "raise",
              chunks: Any = None, trust_recorded: bool = True) -> xr.DataTree:
    """Open a book store as a :class:`xarray.DataTree` with one node per instrument.

    Each node holds that instrument's snapshots (dims ``time``, ``level``) over the
    complete days in ``[start, end]`` (inclusive; all days by default), Dask-backed with
    the on-disk chunks. ``validate`` checks the SPEC's bad-input rules: an
    :class:`~gpu_risk.errors.InputError` under ``on_bad_rows="raise"``, ``qc_*``
    variables under ``"flag"``. Days are validated when written and that is recorded with
    them: opening them again validates only what has no (current) record, unless
    ``trust_recorded=False``.
    """
    if isinstance(instruments, str):  # one instrument, not its letters
        instruments = [instruments]
    names = list(instruments) if instruments is not None else book_instruments(path)
    nodes = {}
    for inst in names:
        nodes[f"/{inst}"] = open_book_instrument(path, inst, start, end, validate=validate,
                                                 on_bad_rows=on_bad_rows, chunks=chunks,
                                                 trust_recorded=trust_recorded)
    tree = xr.DataTree.from_dict(nodes)
    tree.attrs = {"store": str(path)}
    return tree
