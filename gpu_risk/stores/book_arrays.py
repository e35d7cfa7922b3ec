"""The book store's instrument-arrays layout: one array per variable and instrument over
all of its days, and a small index of the days, for stores of many days.

    book.zarr/<instrument>/   attributes: gpu_risk_layout = "instrument-arrays",
                              gpu_risk_days = {day: {start, stop, write_id, qc, first_ns,
                              last_ns, attrs}}, gpu_risk_rows, gpu_risk_sealed_ns
        time (N,) int64 ns; bid_price, ask_price, bid_size, ask_size (N, level) int32 ticks
        or float64; level (level,); traded_volume (N,) where some day has it

Opening a year of small days is then a few arrays per instrument, not one group per day
(the day-group layout costs about 16 ms per instrument-day to open). A day's rows are
appended after the rows already committed and become visible when the index, one small
metadata file written atomically, names them: a writer killed before that leaves rows
nobody reads, which the next append overwrites. A day written again is appended anew and
the index points at the new rows. Each day's validation summary is in the index; the seal
(the latest change under the instrument when the index was last written) tells whether a
chunk was rewritten, truncated or deleted since.

The tick encoding of each array is chosen when the instrument is created (``migrate_book``
chooses one that every migrated day fits); a later day off that grid is refused with an
error naming it rather than rounded.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..coding import TICKS_ATTR, TickChooser, _encode, cf_scale_factor, decode_ticked, spec_of, tick_attrs
from ..errors import InputError
from ..schema import BOOK_OPTIONAL_VARS, BOOK_VARS, describe
from ..validate import (
    OnBadRows,
    book_qc_summary,
    is_clean_summary,
    is_current_summary,
    no_flags,
    stamp_validated,
    validate_book_dataset,
    without_flagged_rows,
)
from .days import (
    BOOK_CHUNK_ROWS,
    DAY_INDEX,
    MANIFEST,
    NUMBER_COMPRESSORS,
    SEAL,
    TICK_COMPRESSORS,
    TIME_ENCODING,
    PathLike,
    _latest_change_ns,
    _local_group_document,
    _select_days,
    check_manifest,
    check_within_day,
    chunk_manifest,
    day_key,
    is_sealed,
    naming_metadata,
    seal_holds,
    shared_day_attrs,
)

LAYOUT_ATTR = "gpu_risk_layout"
INSTRUMENT_ARRAYS = "instrument-arrays"
ROWS_ATTR = "gpu_risk_rows"  # rows committed: the next day's rows start here
BOOK_LAYOUT_ATTR = "gpu_risk_book_layout"  # on the store's root: the layout of new instruments
TIME_FILL = np.iinfo(np.int64).min  # a missing time chunk reads as NaT, which validation flags
_TIME_ATTRS = {"units": TIME_ENCODING["units"], "calendar": TIME_ENCODING["calendar"]}


def _index_qc(day: xr.Dataset) -> dict:
    """A day's validation summary as an instrument's day index keeps it: without the last
    valid snapshot's values (one row read from the arrays costs nothing here, and a year's
    index is parsed at every opening)."""
    summary = book_qc_summary(day)
    summary.pop("last_valid", None)
    return summary


def _meta(node: zarr.Group | zarr.Array) -> dict[str, Any]:
    """A node's attributes as a plain dict (zarr types them as JSON)."""
    return dict(node.attrs)


def is_instrument_arrays(path: PathLike, instrument: str) -> bool:
    meta = _local_group_document(path, instrument)  # a local group's document read alone
    if meta is not None:
        return meta.get("attributes", {}).get(LAYOUT_ATTR) == INSTRUMENT_ARRAYS
    try:
        node = zarr.open_group(str(path), path=instrument, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError):
        return False
    return _meta(node).get(LAYOUT_ATTR) == INSTRUMENT_ARRAYS


def store_layout(path: PathLike) -> str:
    """The layout new instruments of a book store get ("day-groups" unless migrated)."""
    if not Path(str(path)).exists():
        return "day-groups"
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    return str(_meta(root).get(BOOK_LAYOUT_ATTR, "day-groups"))


def day_index(path: PathLike, instrument: str) -> dict[str, dict]:
    """The instrument's committed days: day -> {start, stop, write_id, qc, ...}."""
    node = zarr.open_group(str(path), path=instrument, mode="r", zarr_format=3)
    found = _meta(node).get(DAY_INDEX)
    return dict(found) if isinstance(found, dict) else {}


def instrument_days(path: PathLike, instrument: str, start: Any = None, end: Any = None) -> list[str]:
    return _select_days(sorted(day_index(path, instrument)), start, end)


# ---------------------------------------------------------------------------- writing


def _create_instrument(path: PathLike, instrument: str, levels: int, specs: dict[str, Any],
                       chunk_rows: int, optional_vars: Iterable[str] = ()) -> zarr.Group:
    """The instrument's group and empty arrays; ``specs[name]``: its tick encoding, or None
    for float64."""
    group = zarr.open_group(str(path), path=instrument, mode="w", zarr_format=3)
    group.create_array("time", shape=(0,), chunks=(chunk_rows,), dtype="int64", fill_value=TIME_FILL,
                       compressors=NUMBER_COMPRESSORS, dimension_names=("time",),
                       attributes=dict(_TIME_ATTRS, long_name="event time of the snapshot", _FillValue=int(TIME_FILL)))
    level = group.create_array("level", shape=(levels,), chunks=(levels,), dtype="int16",
                               dimension_names=("level",), attributes=_json({"long_name": "book level, 1 = best"}))
    level[:] = np.arange(1, levels + 1, dtype=np.int16)
    for name, var in BOOK_VARS.items():
        spec = specs.get(name)
        if spec is not None:
            attrs = describe(var) | tick_attrs(spec)
            # other CF readers get the values back, empty levels as NaN
            attrs.update(scale_factor=cf_scale_factor(attrs), _FillValue=int(np.iinfo(np.int32).min))
            group.create_array(name, shape=(0, levels), chunks=(chunk_rows, levels), dtype="int32",
                               fill_value=np.iinfo(np.int32).min, compressors=TICK_COMPRESSORS,
                               dimension_names=var.dims, attributes=_json(attrs))
        else:
            group.create_array(name, shape=(0, levels), chunks=(chunk_rows, levels), dtype="float64",
                               fill_value=np.nan, compressors=NUMBER_COMPRESSORS, dimension_names=var.dims,
                               attributes=_json(describe(var)))
    for name in optional_vars:
        _create_optional(group, name, chunk_rows)
    group.attrs.update({LAYOUT_ATTR: INSTRUMENT_ARRAYS, DAY_INDEX: {}, ROWS_ATTR: 0,
                        "instrument": instrument})
    return group


def _create_optional(group: zarr.Group, name: str, chunk_rows: int) -> None:
    var = BOOK_OPTIONAL_VARS[name]
    rows = _arrays(group)["time"].shape[0]
    group.create_array(name, shape=(rows,), chunks=(chunk_rows,), dtype="float64", fill_value=np.nan,
                       compressors=NUMBER_COMPRESSORS, dimension_names=var.dims, attributes=_json(describe(var)))


def _json(attrs: dict) -> dict[str, Any]:
    return dict(attrs)


def _arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    return {name: array for name, array in group.arrays() if isinstance(array, zarr.Array)}


def _encoded(array: zarr.Array, values: np.ndarray, *, where: str) -> np.ndarray:
    """``values`` as the array stores them: exact ticks under its encoding, or float64."""
    spec = spec_of(_meta(array))
    if spec is None:
        return np.asarray(values, dtype=array.dtype)
    ticks, bad = _encode(values, spec)
    if bad >= 0:
        raise InputError(f"value {np.ravel(values)[bad]!r} of {where} is off the instrument's tick grid "
                         f"{_meta(array)[TICKS_ATTR]} (chosen with its first day); write it to a "
                         "day-group book store", variable=array.basename)
    return ticks


class DayAppender:
    """Append one day's snapshots to an instrument, slab by slab, never holding the day:
    the :class:`~gpu_risk.stores.days.RegionWriter` interface (``write(start, slab)``,
    ``close()``), for importers and ``synth`` writing into an instrument-arrays store."""

    def __init__(self, path: PathLike, instrument: str, date: Any, time: np.ndarray, levels: int,
                 chunk_rows: int = BOOK_CHUNK_ROWS, extra_attrs: dict | None = None,
                 optional_vars: tuple[str, ...] = (), ticks: dict | None = None):
        self.path, self.instrument, self.day = str(path), instrument, day_key(date)
        self.extra_attrs = dict(extra_attrs or {})
        self.group = _open_for_append(path, instrument, levels, chunk_rows, optional_vars,
                                      lambda: dict(ticks or {}))
        self.arrays = _arrays(self.group)
        # rows past the committed end belong to no day (a killed writer's): overwritten
        self.start = int(_meta(self.group).get(ROWS_ATTR, 0))
        raw = np.asarray(time, dtype="datetime64[ns]").view(np.int64)
        self.stop = _extend(self.arrays, self.start, raw)
        self.first_ns = int(raw[0]) if raw.size else None
        self.last_ns = int(raw[-1]) if raw.size else None

    def write(self, start: int, slab: xr.Dataset) -> None:
        rows = slice(self.start + start, self.start + start + slab.sizes["time"])
        for name, var in slab.data_vars.items():
            if name in self.arrays:
                where = f"{self.instrument} {self.day} {name}"
                self.arrays[name][rows] = _encoded(self.arrays[name], np.asarray(var.values), where=where)

    def close(self) -> None:
        day = open_instrument_rows(self.path, self.instrument, self.start, self.stop)
        entry = {"start": self.start, "stop": self.stop, "qc": _index_qc(day),
                 "first_ns": self.first_ns, "last_ns": self.last_ns, "attrs": self.extra_attrs}
        _commit(self.path, self.instrument, {self.day: entry}, self.stop)


def _commit(path: PathLike, instrument: str, entries: dict[str, dict], rows: int) -> None:
    """Make ``entries`` (day -> rows and summary) visible: one atomic metadata write."""
    group = zarr.open_group(str(path), path=instrument, mode="r+", zarr_format=3)
    index = dict(_meta(group).get(DAY_INDEX) or {})
    for day, entry in entries.items():
        index[day] = entry | {"write_id": uuid.uuid4().hex}
    group.attrs.update({DAY_INDEX: index, ROWS_ATTR: int(rows), SEAL: _latest_change_ns(path, instrument),
                        MANIFEST: chunk_manifest(path, instrument)})


def _open_for_append(path: PathLike, instrument: str, levels: int, chunk_rows: int,
                     optional_vars: Iterable[str], specs) -> zarr.Group:
    """The instrument's group, ready for rows of ``levels`` levels and ``optional_vars``:
    created (with the encodings ``specs()`` chooses) when absent."""
    if not is_instrument_arrays(path, instrument):
        _create_instrument(path, instrument, levels, specs(), chunk_rows, optional_vars)
    group = zarr.open_group(str(path), path=instrument, mode="r+", zarr_format=3)
    arrays = _arrays(group)
    if arrays["level"].shape[0] != levels:
        raise InputError(f"{levels} levels, but the instrument's arrays hold {arrays['level'].shape[0]}",
                         store=str(path), instrument=instrument, variable="level")
    for name in optional_vars:
        if name not in arrays:
            _create_optional(group, name, arrays["time"].chunks[0])
    return group


def _extend(arrays: dict[str, zarr.Array], start: int, time_ns: np.ndarray) -> int:
    """Rows [start, start + n) for ``n`` snapshot times: every array along time resized to
    end there, the times written; returns the end row."""
    stop = start + time_ns.size
    for array in arrays.values():
        if array.basename != "level":
            array.resize((stop, *array.shape[1:]))
    arrays["time"][start:stop] = time_ns
    return stop


def _append_block(group: zarr.Group, start: int, ds: xr.Dataset, *, where: str) -> int:
    """Write the in-memory snapshots ``ds`` at rows [start, start + n) (resizing the arrays
    to end there), in one write per array; returns the end row."""
    arrays = _arrays(group)
    stop = _extend(arrays, start, ds["time"].values.astype("datetime64[ns]").view(np.int64))
    for name, var in ds.data_vars.items():
        if name in arrays:
            arrays[name][start:stop] = _encoded(arrays[name], np.asarray(var.values), where=f"{where} {name}")
    return stop


def _write_days(group: zarr.Group, start: int, block: list[xr.Dataset], where: str) -> int:
    """Write the buffered days ``block`` (emptied) from row ``start``; returns the end row."""
    if not block:
        return start
    joined = block[0] if len(block) == 1 else xr.concat(
        block, "time", data_vars="minimal", coords="minimal", compat="override", join="override")
    block.clear()
    return _append_block(group, start, joined, where=where)


def _day_entries(ds: xr.Dataset, start: int, day_attrs: dict | None = None) -> dict[str, dict]:
    """Index entries of the days of ``ds`` (time-sorted) written from row ``start``."""
    raw = ds["time"].values.astype("datetime64[ns]")
    day_of = raw.astype("datetime64[D]")
    bounds = np.flatnonzero(np.diff(day_of.view(np.int64))) + 1
    entries = {}
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, raw.size]):
        lo, hi = int(lo), int(hi)
        ns = raw[lo:hi].view(np.int64)
        entries[day_key(day_of[lo])] = {"start": start + lo, "stop": start + hi,
                                        "qc": _index_qc(ds.isel(time=slice(lo, hi))),
                                        "first_ns": int(ns[0]), "last_ns": int(ns[-1]),
                                        "attrs": dict(day_attrs or {})}
    return entries


def append_days(ds: xr.Dataset, path: PathLike, instrument: str, chunk_rows: int = BOOK_CHUNK_ROWS,
                day_attrs: dict | None = None) -> list[str]:
    """Append a validated, time-sorted, in-memory book of one or more UTC days to an
    instrument (created with encodings that fit it when absent); the days become visible
    at once, in one commit."""
    def fitting_encodings() -> dict:
        specs = {}
        for name in BOOK_VARS:
            chooser = TickChooser()
            chooser.feed(np.asarray(ds[name].values))
            specs[name] = chooser.spec
        return specs

    group = _open_for_append(path, instrument, ds.sizes["level"], chunk_rows,
                             tuple(n for n in BOOK_OPTIONAL_VARS if n in ds), fitting_encodings)
    if not ds.sizes["time"]:
        return []
    start = int(_meta(group).get(ROWS_ATTR, 0))  # rows past it belong to no day: overwritten
    stop = _append_block(group, start, ds, where=instrument)
    entries = _day_entries(ds, start, day_attrs)
    _commit(path, instrument, entries, stop)
    return sorted(entries)


# ---------------------------------------------------------------------------- reading


def _lazy(array: zarr.Array, token: str, chunks: Any) -> da.Array:
    """A Dask array over a Zarr array, named by the instrument's version (no hashing)."""
    name = f"book-{array.path.replace('/', '-')}-{token}"
    return da.from_array(array, chunks=array.chunks, name=name, asarray=True, fancy=False, lock=False,
                         meta=np.empty((0,) * array.ndim, dtype=array.dtype))


def _runs(index: dict[str, dict], days: list[str]) -> list[tuple[int, int]]:
    """Row ranges of ``days`` (in date order), adjacent ranges merged."""
    runs: list[tuple[int, int]] = []
    for d in days:
        a, b = int(index[d]["start"]), int(index[d]["stop"])
        if runs and runs[-1][1] == a:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((a, b))
    return runs


def _dataset(path: PathLike, instrument: str, group: zarr.Group, runs: list[tuple[int, int]],
             chunks: Any, latest: int | None = None) -> xr.Dataset:
    """The rows ``runs`` as a lazy dataset; ``latest``: the latest change under the
    instrument, which names its Dask arrays (a version read before is never reused)."""
    arrays = _arrays(group)
    meta = _meta(group)
    token = f"{meta.get(SEAL)}-{meta.get(ROWS_ATTR)}-{latest}"
    raw_time = np.concatenate([arrays["time"][a:b] for a, b in runs]) if runs else np.empty(0, np.int64)
    time = raw_time.view("datetime64[ns]")  # the fill value reads as NaT
    variables = {}
    for name, array in arrays.items():
        if name in ("time", "level"):
            continue
        lazy = _lazy(array, token, chunks)
        pieces = [lazy[a:b] for a, b in runs]
        data = pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=0)
        dims = tuple(getattr(array.metadata, "dimension_names", None) or ())
        variables[name] = xr.Variable(dims, data, _meta(array))
    ds = decode_ticked(xr.Dataset(variables, coords={"time": time, "level": arrays["level"][:]}))
    for var in ds.data_vars.values():
        var.attrs.pop("scale_factor", None)
    if chunks:
        ds = ds.chunk(chunks)
    return ds


def open_instrument_rows(path: PathLike, instrument: str, start: int, stop: int) -> xr.Dataset:
    """Rows [start, stop) of an instrument, whatever day they belong to (not validated)."""
    group = zarr.open_group(str(path), path=instrument, mode="r", zarr_format=3)
    return _dataset(path, instrument, group, [(start, stop)], None)


def open_instrument(path: PathLike, instrument: str, start: Any = None, end: Any = None, *,
                    validate: bool = True, on_bad_rows: OnBadRows = "raise", chunks: Any = None,
                    trust_recorded: bool = True) -> xr.Dataset:
    """:func:`~gpu_risk.stores.book.open_book_instrument` for an instrument-arrays instrument."""
    with naming_metadata(path, instrument):
        group = zarr.open_group(str(path), path=instrument, mode="r", zarr_format=3)
        _arrays(group)  # every array's metadata read now, not inside a task
    attrs = _meta(group)
    index = attrs.get(DAY_INDEX) or {}
    days = _select_days(sorted(index), start, end)
    if not days:
        raise InputError(f"no complete day in [{start}, {end}]", store=str(path), instrument=instrument)
    latest = _latest_change_ns(path, instrument)  # names the Dask arrays too
    sealed = seal_holds(attrs, latest)
    if not sealed:  # changed since the last commit: a chunk missing or truncated is named
        check_manifest(path, instrument, attrs, extra_ok=True)
    ds = _dataset(path, instrument, group, _runs(index, days), chunks, latest)
    ds.attrs = {"instrument": instrument, "days": days, "store": str(path),
                **shared_day_attrs([dict(index[d].get("attrs") or {}) for d in days])}
    times, offset = ds["time"].values, 0
    for d in days:
        n = int(index[d]["stop"]) - int(index[d]["start"])
        check_within_day(times[offset:offset + n], d, store=str(path), instrument=instrument, offset=offset)
        offset += n
    entries = [index[d] for d in days]
    clean = trust_recorded and sealed and all(
        is_clean_summary(e.get("qc"), int(e["stop"]) - int(e["start"])) for e in entries) and all(
        a["last_ns"] is None or b["first_ns"] is None or a["last_ns"] <= b["first_ns"]
        for a, b in zip(entries, entries[1:]))
    if validate and clean:
        return stamp_validated(no_flags(ds) if on_bad_rows == "flag" else ds, "book")
    if validate:
        ds = validate_book_dataset(ds, store=str(path), instrument=instrument, on_bad_rows=on_bad_rows)
    return ds


def last_valid_snapshot(path: PathLike, instrument: str, day: str) -> xr.Dataset | None:
    """The day's last snapshot that breaks no rule (one row), or None."""
    group = zarr.open_group(str(path), path=instrument, mode="r", zarr_format=3)
    attrs = _meta(group)
    entry = (attrs.get(DAY_INDEX) or {})[day]
    a, b = int(entry["start"]), int(entry["stop"])
    summary = entry.get("qc")
    sealed = is_sealed(path, instrument, attrs)
    if not sealed:
        check_manifest(path, instrument, attrs, extra_ok=True)
    if not (sealed and is_current_summary(summary, b - a)):
        kept = without_flagged_rows(validate_book_dataset(
            _dataset(path, instrument, group, [(a, b)], None), on_bad_rows="flag"))
        return kept.isel(time=[-1]).load() if kept.sizes["time"] else None
    assert isinstance(summary, dict)
    row = int(summary["last_valid_row"])
    if row < 0:
        return None
    one = _dataset(path, instrument, group, [(a + row, a + row + 1)], None).load()
    return one[list(BOOK_VARS)]


# ---------------------------------------------------------------------------- migrating


def migrate_book(path: PathLike, *, chunk_rows: int = BOOK_CHUNK_ROWS, progress=None) -> dict:
    """Convert a day-group book store to the instrument-arrays layout, in place.

    The new store is written beside the old one (``<store>.migrating``) day by day, then
    swapped in with two renames; a killed migration leaves the old store untouched (run it
    again). Every complete day is carried over with its attributes and a fresh validation
    summary; each array's tick encoding is one that every day fits (else float64)."""
    from .book import book_days, open_book_instrument  # noqa: PLC0415  (book imports this module)
    from .days import init_store, open_day_dataset  # noqa: PLC0415

    src = Path(str(path))
    tmp = src.with_name(src.name + ".migrating")
    shutil.rmtree(tmp, ignore_errors=True)
    root = init_store(tmp, "book")
    root.attrs[BOOK_LAYOUT_ATTR] = INSTRUMENT_ARRAYS
    summary: dict[str, int] = {}
    for instrument, days in book_days(src).items():
        if is_instrument_arrays(src, instrument):
            shutil.copytree(src / instrument, tmp / instrument)
            summary[instrument] = len(day_index(src, instrument))
            continue
        if not days:
            continue
        # first pass: the encodings every day fits
        choosers = {name: TickChooser() for name in BOOK_VARS}
        levels, optional = None, set()
        for d in days:
            day = open_book_instrument(src, instrument, d, d, validate=False).load()
            levels = day.sizes["level"] if levels is None else levels
            if day.sizes["level"] != levels:
                raise InputError(f"day {d} has {day.sizes['level']} levels, earlier days {levels}: an "
                                 "instrument's arrays hold one number of levels", store=str(src),
                                 instrument=instrument)
            optional |= {n for n in BOOK_OPTIONAL_VARS if n in day}
            for name, chooser in choosers.items():
                chooser.feed(np.asarray(day[name].values))
        assert levels is not None
        _create_instrument(tmp, instrument, levels, {n: c.spec for n, c in choosers.items()}, chunk_rows,
                           sorted(optional))
        # second pass: the days in blocks of about a chunk (aligned, one write per array), then
        # one commit
        group = zarr.open_group(str(tmp), path=instrument, mode="r+", zarr_format=3)
        entries: dict[str, dict] = {}
        stop, block_rows = 0, 0
        block: list[xr.Dataset] = []

        for d in days:
            raw = open_day_dataset(src, f"{instrument}/{d}")
            day = open_book_instrument(src, instrument, d, d, validate=False).load()
            keep = {k: v for k, v in raw.attrs.items() if k not in ("instrument", "date", "gpu_risk_qc")}
            entries.update(_day_entries(day, stop + block_rows, keep))
            block.append(day)
            block_rows += day.sizes["time"]
            if block_rows >= chunk_rows:
                stop, block_rows = _write_days(group, stop, block, instrument), 0
            if progress is not None:
                progress(instrument, d)
        stop = _write_days(group, stop, block, instrument)
        _commit(tmp, instrument, entries, stop)
        summary[instrument] = len(entries)
    aside = src.with_name(src.name + ".day-groups")
    shutil.rmtree(aside, ignore_errors=True)
    src.rename(aside)
    tmp.rename(src)
    shutil.rmtree(aside, ignore_errors=True)
    return summary
