"""Zarr 3 stores: book, positions, market and results.

Layout (every leaf group is one xarray Dataset):

    book.zarr/<instrument>/<YYYY-MM-DD>/   bid_price, ask_price, bid_size, ask_size (time, level)
    positions.zarr/<YYYY-MM-DD>/           balance, position, entry_price, margin_mode, isolated_margin
    market.zarr/<YYYY-MM-DD>/              price, haircut, beta (asset); kind, ... (instrument); brackets
    results.zarr/<YYYY-MM-DD>/<family>/    one group per result family

Each day is its own group rather than an append along ``time`` (Zarr 3 append pitfalls,
see docs/operations.md). A day group carries the attribute ``gpu_risk_complete``: it is
written ``False`` first and set ``True`` only after every array of the day is written,
so a killed writer never leaves a day that looks complete; readers skip incomplete days
and writers overwrite them. Arrays are not sharded and Dask write chunks equal Zarr
chunks, so parallel writes never share a chunk.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import xarray as xr
import yaml
import zarr
from zarr.codecs import BloscCodec

from .coding import (
    TICK_FILL,
    TICKED_VARS,
    TICKS_ATTR,
    cf_scale_factor,
    decode_ticked,
    encode_ticked,
    encode_with,
    tick_attrs,
)
from .errors import InputError, SchemaError
from .schema import (
    BOOK_OPTIONAL_VARS,
    BOOK_VARS,
    MARGIN_MODES,
    MARKET_ASSET_VARS,
    MARKET_BRACKET_VARS,
    MARKET_INSTRUMENT_VARS,
    POSITION_VARS,
    as_str,
    describe,
)
from .validate import (
    QC_RULES_VERSION,
    OnBadRows,
    book_qc_summary,
    is_clean_summary,
    is_current_summary,
    no_flags,
    positions_qc_summary,
    positions_without_bad_rows,
    stamp_validated,
    validate_book_dataset,
    validate_market,
    validate_positions,
    without_flagged_rows,
)

COMPLETE = "gpu_risk_complete"
QC_ATTR = "gpu_risk_qc"  # a book day's validation summary (validate.book_qc_summary)
STORE_KIND = "gpu_risk_store"
SCHEMA_VERSION = 1
BOOK_CHUNK_ROWS = 262_144  # ~21 MB per float64 variable at 10 levels: Dask tasks of ~100 MB
ACCOUNT_CHUNK_ROWS = 262_144
TIME_ENCODING = {"units": "nanoseconds since 1970-01-01", "calendar": "proleptic_gregorian",
                 "dtype": "int64"}

PathLike = str | os.PathLike


def day_key(date: Any) -> str:
    """'YYYY-MM-DD' for a date, datetime, numpy datetime64 or string."""
    return pd.Timestamp(date).strftime("%Y-%m-%d")


def _zarr_kwargs() -> dict:
    return {"zarr_format": 3, "consolidated": False}


# ------------------------------------------------------------------ generic helpers


def init_store(path: PathLike, kind: str) -> zarr.Group:
    """Open (creating if absent) a store's root group and check it is a ``kind`` store."""
    path = str(path)
    if Path(path).exists():
        root = zarr.open_group(path, mode="r+", zarr_format=3)
        found = root.attrs.get(STORE_KIND)
        if found not in (None, kind):
            raise SchemaError(f"{path!r} is a {found} store, not a {kind} store", store=path)
        if found is None:
            root.attrs.update({STORE_KIND: kind, "schema_version": SCHEMA_VERSION})
        return root
    root = zarr.open_group(path, mode="w", zarr_format=3)
    root.attrs.update({STORE_KIND: kind, "schema_version": SCHEMA_VERSION})
    return root


def _open_root(path: PathLike, kind: str) -> zarr.Group:
    path = str(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"no {kind} store at {path!r}")
    try:
        root = zarr.open_group(path, mode="r", zarr_format=3)
    except Exception as exc:  # zarr raises several types for a non-store directory
        raise SchemaError(f"{path!r} is not a Zarr 3 group ({exc})", store=path) from exc
    found = root.attrs.get(STORE_KIND)
    if found != kind:
        raise SchemaError(f"{path!r} is a {found or 'foreign'} store, not a {kind} store", store=path)
    return root


def child_groups(path: PathLike, group: str = "") -> list[str]:
    """Sorted names of the child groups of ``group``."""
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    node = root[group] if group else root
    return sorted(name for name, _ in node.groups())


def is_complete(path: PathLike, group: str) -> bool:
    try:
        node = zarr.open_group(str(path), path=group, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError):
        return False
    return bool(node.attrs.get(COMPLETE, False))


WRITE_ID = "gpu_risk_write_id"  # a new random id each time a group is completed
SEAL = "gpu_risk_sealed_ns"  # the latest change under a group when it was completed


def _latest_change_ns(path: PathLike, group: str) -> int | None:
    """The latest modification time (ns) of any file or directory under a local group, its
    own metadata file aside; None for a store that is not a local directory."""
    root = Path(str(path)) / group
    if not root.is_dir():
        return None
    # the group's own directory and metadata change when it is completed (and its attributes
    # updated); a whole array removed from it fails opening as a missing variable
    latest = 0
    own = root / "zarr.json"
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            entry = Path(folder) / name
            if entry != own:
                latest = max(latest, entry.lstat().st_mtime_ns)
    return latest


def is_sealed(path: PathLike, group: str, attrs: dict) -> bool:
    """Whether nothing under ``group`` (a chunk written, truncated or deleted, an array's
    metadata) changed since it was completed: what its recorded validation may be trusted
    on. ``attrs``: the group's attributes, or an opened day's ``encoding``, holding the seal."""
    sealed = attrs.get(SEAL)
    latest = _latest_change_ns(path, group)
    return isinstance(sealed, int) and latest is not None and latest <= sealed


def mark_complete(path: PathLike, group: str) -> None:
    """Make ``group`` visible to readers; its new write id tells results made from an
    earlier version of it (an input day rewritten since) from results made from this one,
    and its seal lets a later reader see whether anything under it changed since."""
    import uuid  # noqa: PLC0415

    zarr.open_group(str(path), path=group, mode="r+", zarr_format=3).attrs.update(
        {COMPLETE: True, WRITE_ID: uuid.uuid4().hex, SEAL: _latest_change_ns(path, group)})


def day_identity(path: PathLike, group: str) -> str:
    """What identifies the current version of a complete group: its write id; for groups
    written before write ids existed, the modification time of its metadata (a rewrite
    changes it)."""
    node = zarr.open_group(str(path), path=group, mode="r", zarr_format=3)
    write_id = node.attrs.get(WRITE_ID)
    if isinstance(write_id, str):
        return write_id
    meta = Path(str(path)) / group / "zarr.json"
    stamp = meta.stat().st_mtime_ns if meta.exists() else 0
    return f"legacy:{stamp}"


DAY_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _day_names(path: PathLike, group: str) -> list[str]:
    """Candidate day names under ``group``: a directory listing for a local store (opening
    every child group to list it cost about 0.5 ms a day, every day of a run)."""
    local = Path(str(path)) / group
    if local.is_dir():
        return sorted(d.name for d in local.iterdir() if DAY_NAME.match(d.name) and d.is_dir())
    return [d for d in child_groups(path, group) if DAY_NAME.match(d)]


def complete_days(path: PathLike, group: str = "", start: Any = None, end: Any = None) -> list[str]:
    """Names of the complete day groups under ``group``, in [start, end] when given (a day
    being rewritten lives in a sibling group with a suffix until it replaces the old one,
    and is not listed); only days in the range are opened to check that they are complete."""
    days = _select_days(_day_names(path, group), start, end)
    return [d for d in days if is_complete(path, f"{group}/{d}".strip("/"))]


def replace_day(path: PathLike, group: str, new_group: str) -> None:
    """Make the complete group ``new_group`` (a sibling) the day ``group``, for a local
    store: rename the old day aside, the new one into place, then delete the old one. A
    run killed in between is finished by :func:`recover_day` on the next write."""
    root = Path(str(path))
    old, new, aside = root / group, root / new_group, root / (group + ".old")
    if not is_complete(path, new_group):
        raise RuntimeError(f"{new_group} is not complete")
    if old.exists():
        old.rename(aside)
    new.rename(old)
    shutil.rmtree(aside, ignore_errors=True)


def recover_day(path: PathLike, group: str) -> None:
    """Finish or undo an interrupted :func:`replace_day` of ``group``."""
    root = Path(str(path))
    old, aside = root / group, root / (group + ".old")
    new = root / (group + ".new")
    if not old.exists() and new.exists() and is_complete(path, group + ".new"):
        new.rename(old)
    if not old.exists() and aside.exists():
        aside.rename(old)
    for leftover in (aside, new):
        shutil.rmtree(leftover, ignore_errors=True)


# Numbers (book, positions, results) are compressed with LZ4 inside Blosc: decoding a book
# runs 2.4x as fast as with zarr's default (Zstandard, level 0) and writing 3x, for files
# 1.7x as large (docs/performance.md, "Store format", lists every candidate measured).
# Blosc is in the Zarr 3 specification, so any Zarr 3 reader decodes these stores; stores
# written with other codecs read as before (the codec is in each array's metadata).
NUMBER_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),)
# book prices and sizes as exact int32 ticks (gpu_risk.coding): byte shuffle then LZ4
TICK_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)


def _encoding(ds: xr.Dataset, chunk_dims: dict[str, int]) -> dict:
    enc: dict[str, dict] = {}
    for name, var in ds.variables.items():
        e: dict[str, Any] = {}
        if var.dtype.kind in "fiub" and var.ndim:
            e["compressors"] = NUMBER_COMPRESSORS
        if TICKS_ATTR in var.attrs and var.dtype == np.int32:
            # the Zarr fill_value too: a missing chunk reads as empty levels, never as 0
            e.update(compressors=TICK_COMPRESSORS, _FillValue=TICK_FILL, fill_value=TICK_FILL)
        if np.issubdtype(var.dtype, np.datetime64):
            e.update(TIME_ENCODING)
            e["compressors"] = NUMBER_COMPRESSORS
        if var.dims and name not in ds.dims:
            e["chunks"] = tuple(min(chunk_dims.get(d, var.sizes[d]), var.sizes[d]) or 1
                                for d in var.dims)
        if e:
            enc[name] = e
    return enc


def _prepare(ds: xr.Dataset) -> xr.Dataset:
    """Strings as variable-length UTF-8 (the Zarr 3 `string` type: fixed-width is unstable);
    datetimes as int64 nanoseconds since the epoch."""
    out = ds.copy()
    for name, var in ds.variables.items():
        if var.dtype.kind in "UT" and var.chunks is None:
            out[name] = var.copy(data=np.asarray(var.values).astype(object))
        elif var.dtype.kind == "M" and var.dtype != np.dtype("datetime64[ns]"):
            # xarray keeps s/ms/us resolutions, which a fixed ns encoding would turn into NaT
            out[name] = var.astype("datetime64[ns]")
    for var in out.variables.values():
        var.encoding = {}
    return out


def _add_cf_scale(path: PathLike, group: str) -> None:
    """Give every ticked array of ``group`` its CF ``scale_factor`` (after xarray wrote it),
    so that CF readers other than gpu_risk get the values back too."""
    node = zarr.open_group(str(path), path=group, mode="r+", zarr_format=3)
    for name, array in node.arrays():
        factor = cf_scale_factor(dict(array.attrs))
        if factor is not None and "scale_factor" not in array.attrs:
            array.attrs["scale_factor"] = factor


def write_day_dataset(
    ds: xr.Dataset, path: PathLike, group: str, chunk_dims: dict[str, int] | None = None
) -> None:
    """Write ``ds`` to ``group`` atomically: incomplete until every array is written.

    ``ds`` may be Dask-backed: its chunks are rechunked to the Zarr chunks first so that
    no two tasks write one Zarr chunk.
    """
    chunk_dims = chunk_dims or {}
    ds = _prepare(ds)
    enc = _encoding(ds, chunk_dims)
    if any(v.chunks is not None for v in ds.variables.values()):
        # one Dask chunk per Zarr chunk: no two tasks ever write the same Zarr chunk
        ds = ds.chunk({d: chunk_dims.get(d, -1) for d in ds.dims})
    ds.attrs[COMPLETE] = False
    ds.to_zarr(str(path), group=group, mode="w", encoding=enc, **_zarr_kwargs())
    if any(TICKS_ATTR in v.attrs for v in ds.data_vars.values()):
        _add_cf_scale(path, group)
    mark_complete(path, group)


class RegionWriter:
    """Write a large dataset one slab of ``dim`` at a time, never holding all of it.

    ``template`` holds the coordinates (written at once) and, for each data variable,
    a lazy array of the final shape; slabs are then written into Zarr regions aligned
    to the chunks, and the group is marked complete on :meth:`close`.
    """

    def __init__(self, template: xr.Dataset, path: PathLike, group: str, dim: str, chunk: int,
                 chunk_dims: dict[str, int] | None = None, encode=None, before_complete=None):
        self.path, self.group, self.dim, self.chunk = str(path), group, dim, chunk
        self._before_complete = before_complete  # called with (path, group) before marking complete
        self._encode = encode or (lambda ds: ds)  # applied to each slab before it is written
        chunk_dims = dict(chunk_dims or {})
        chunk_dims[dim] = chunk
        template = _prepare(template)
        template.attrs[COMPLETE] = False
        enc = _encoding(template, chunk_dims)
        template.to_zarr(self.path, group=group, mode="w", compute=False, encoding=enc,
                         **_zarr_kwargs())
        self.size = template.sizes[dim]
        self._static = [n for n, v in template.variables.items() if dim not in v.dims]

    def write(self, start: int, slab: xr.Dataset) -> None:
        if start % self.chunk:
            raise ValueError(f"region start {start} not aligned to chunk {self.chunk}")
        stop = start + slab.sizes[self.dim]
        slab = _prepare(self._encode(slab.drop_vars([n for n in self._static if n in slab.variables])))
        slab.to_zarr(self.path, group=self.group, region={self.dim: slice(start, stop)},
                     mode="r+", **_zarr_kwargs())

    def close(self) -> None:
        _add_cf_scale(self.path, self.group)
        if self._before_complete is not None:
            self._before_complete(self.path, self.group)
        mark_complete(self.path, self.group)


def _lazy_template(coords: dict, variables: dict[str, tuple[tuple[str, ...], np.dtype, dict]],
                   sizes: dict[str, int], chunk_dims: dict[str, int]) -> xr.Dataset:
    import dask.array as da

    data_vars = {}
    for name, (dims, dtype, attrs) in variables.items():
        shape = tuple(sizes[d] for d in dims)
        chunks = tuple(min(chunk_dims.get(d, sizes[d]), sizes[d]) or 1 for d in dims)
        data_vars[name] = xr.Variable(dims, da.empty(shape, dtype=dtype, chunks=chunks), attrs)
    return xr.Dataset(data_vars, coords=coords)


def open_day_dataset(path: PathLike, group: str, chunks: Any = None) -> xr.Dataset:
    # book arrays stored as ticks are decoded by gpu_risk (exactly, one pass per chunk),
    # not by xarray's CF mask-and-scale
    ds = xr.open_zarr(str(path), group=group, chunks={} if chunks is None else chunks,
                      mask_and_scale={name: False for name in TICKED_VARS}, **_zarr_kwargs())
    ds = decode_ticked(ds)
    # Variable-length strings come back as numpy StringDType; plain `str` labels index best.
    for name in list(ds.coords):
        if ds[name].dtype.kind in "TO":
            ds = ds.assign_coords({name: as_str(ds[name].values)})
    ds.attrs.pop(COMPLETE, None)
    ds.attrs.pop(WRITE_ID, None)
    # bookkeeping, not data: kept where is_sealed looks for it, out of the dataset's attributes
    ds.encoding[SEAL] = ds.attrs.pop(SEAL, None)
    return ds


# --------------------------------------------------------------------------- book


def _check_instrument_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"instrument name {name!r} must be non-empty, without '/' or leading '.'")


def _with_attrs(ds: xr.Dataset, *specs: dict) -> xr.Dataset:
    """A copy of ``ds`` whose variables carry the schema's ``units`` and ``long_name``."""
    ds = ds.copy()
    for spec in specs:
        for name, var in spec.items():
            if name in ds:
                ds[name].attrs.update(describe(var))
    return ds


def write_book(ds: xr.Dataset, path: PathLike, instrument: str,
               chunk_rows: int = BOOK_CHUNK_ROWS) -> list[str]:
    """Write one instrument's snapshots, split into one complete group per UTC day.

    Returns the days written. The dataset must pass :func:`validate_book_dataset`.
    """
    _check_instrument_name(instrument)
    validate_book_dataset(ds, store=str(path), instrument=instrument)
    init_store(path, "book")
    day = ds["time"].values.astype("datetime64[D]")
    written = []
    for d in np.unique(day):
        part = _with_attrs(ds.isel(time=np.flatnonzero(day == d)), BOOK_VARS)
        key = day_key(d)
        part.attrs.update(instrument=instrument, date=key)
        rows = part.sizes["time"]  # validated above: every row is clean
        part.attrs[QC_ATTR] = {"rules": QC_RULES_VERSION, "rows": rows, "bad_rows": 0,
                               "last_valid_row": rows - 1}
        part = encode_ticked(part.load())[0]  # exact int32 ticks where the values allow
        write_day_dataset(part, path, f"{instrument}/{key}", {"time": chunk_rows})
        written.append(key)
    return written


def book_writer(path: PathLike, instrument: str, date: Any, time: np.ndarray, levels: int,
                chunk_rows: int = BOOK_CHUNK_ROWS, extra_attrs: dict | None = None,
                optional_vars: tuple[str, ...] = (), suffix: str = "",
                ticks: dict[str, tuple[float, float]] | None = None) -> RegionWriter:
    """A :class:`RegionWriter` for one instrument-day whose snapshot times are known;
    ``optional_vars`` names variables of ``BOOK_OPTIONAL_VARS`` the slabs will carry too;
    ``suffix`` writes a sibling group (``<day><suffix>``) that :func:`replace_day` swaps in;
    ``ticks`` maps book variables to exact tick encodings ``(divisor, multiplier)``
    (:mod:`gpu_risk.coding`): their slabs are stored as int32 ticks, and a value off the
    grid raises instead of being rounded."""
    ticks = {k: v for k, v in (ticks or {}).items() if v is not None}
    _check_instrument_name(instrument)
    init_store(path, "book")
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


def _record_qc(path: PathLike, group: str, summarize) -> dict:
    """Validate a written group in one pass (``summarize`` of its opened dataset) and record
    the summary on it, before it is marked complete."""
    summary = summarize(open_day_dataset(path, group))
    zarr.open_group(str(path), path=group, mode="r+", zarr_format=3).attrs[QC_ATTR] = summary
    return summary


def record_book_qc(path: PathLike, group: str) -> dict:
    """Validate a written book day in one pass and record the summary on its group."""
    return _record_qc(path, group, book_qc_summary)


def book_instruments(path: PathLike) -> list[str]:
    _open_root(path, "book")
    return child_groups(path)


def book_days(path: PathLike) -> dict[str, list[str]]:
    """Complete days per instrument."""
    return {inst: complete_days(path, inst) for inst in book_instruments(path)}


def _select_days(days: Iterable[str], start: Any, end: Any) -> list[str]:
    lo = day_key(start) if start is not None else None
    hi = day_key(end) if end is not None else None
    return [d for d in days if (lo is None or d >= lo) and (hi is None or d <= hi)]


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
    days = complete_days(path, instrument, start, end)
    if not days:
        raise InputError(f"no complete day in [{start}, {end}]", store=str(path), instrument=instrument)
    parts = [open_day_dataset(path, f"{instrument}/{d}", chunks) for d in days]
    # days validated when written (their recorded summary says clean) are not read again:
    # only the order of time across their boundaries is checked here
    clean = trust_recorded and all(
        is_clean_summary(p.attrs.get(QC_ATTR), p.sizes["time"]) and is_sealed(path, f"{instrument}/{d}", p.encoding)
        for d, p in zip(days, parts)) and all(
        a["time"].values[-1] <= b["time"].values[0]
        for a, b in zip(parts, parts[1:]) if a.sizes["time"] and b.sizes["time"])
    ds = parts[0] if len(parts) == 1 else xr.concat(
        parts, dim="time", data_vars="minimal", coords="minimal", compat="override", join="exact")
    ds.attrs = {"instrument": instrument, "days": days, "store": str(path)}
    if validate and clean:
        return stamp_validated(no_flags(ds) if on_bad_rows == "flag" else ds, "book")
    if validate:
        ds = validate_book_dataset(ds, store=str(path), instrument=instrument, on_bad_rows=on_bad_rows)
    return ds


def last_valid_snapshot(path: PathLike, instrument: str, day: str) -> xr.Dataset | None:
    """The last snapshot of ``day`` that breaks no rule (one row), or None: read from the
    day's recorded validation summary where it has one, else by validating the day."""
    group = f"{instrument}/{day}"
    node = zarr.open_group(str(path), path=group, mode="r", zarr_format=3)
    summary = node.attrs.get(QC_ATTR)
    rows = node["time"].shape[0]
    if not (is_current_summary(summary, rows) and is_sealed(path, group, dict(node.attrs))):
        kept = without_flagged_rows(validate_book_dataset(open_day_dataset(path, group), on_bad_rows="flag"))
        return kept.isel(time=[-1]) if kept.sizes["time"] else None
    row = int(summary["last_valid_row"])
    if row < 0:
        return None
    # one row read straight from Zarr (opening the day with xarray would load its time axis)
    one = xr.Dataset({"time": ("time", node["time"][row:row + 1])})
    time = xr.decode_cf(one.assign_coords(time=one["time"].assign_attrs(dict(node["time"].attrs))))["time"].values
    variables = {}
    for name in BOOK_VARS:
        raw = node[name][row:row + 1]
        variables[name] = (("time", "level"), decode_ticked(xr.Dataset(
            {name: (("time", "level"), raw, dict(node[name].attrs))}))[name].values)
    return xr.Dataset(variables, coords={"time": time, "level": node["level"][:]})


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
    names = list(instruments) if instruments is not None else book_instruments(path)
    nodes = {}
    for inst in names:
        nodes[f"/{inst}"] = open_book_instrument(path, inst, start, end, validate=validate,
                                                 on_bad_rows=on_bad_rows, chunks=chunks,
                                                 trust_recorded=trust_recorded)
    tree = xr.DataTree.from_dict(nodes)
    tree.attrs = {"store": str(path)}
    return tree


# ---------------------------------------------------------------------- positions

# margin_mode is stored as CF flag codes (uint8 with flag_values / flag_meanings) and read
# back as strings: decoding a million variable-length strings cost 0.2-0.3 s, about as much
# as the stress kernel's work on those accounts; codes decode in milliseconds. Stores holding
# strings (written by other tools, or before this encoding) are read as they are.
_UNKNOWN_MODE = 255  # anything else: decoded to "" and flagged qc_bad_margin_mode on validation
_MODE_TABLE = np.full(256, "", dtype="<U8")
_MODE_TABLE[: len(MARGIN_MODES)] = MARGIN_MODES


def _mode_codes(modes) -> np.ndarray:
    modes = np.asarray(modes)
    codes = np.full(modes.shape, _UNKNOWN_MODE, dtype=np.uint8)
    for code, name in enumerate(MARGIN_MODES):
        codes[modes == name] = code
    return codes


def _mode_names(codes) -> np.ndarray:
    return _MODE_TABLE[np.asarray(codes)]


def encode_margin_mode(ds: xr.Dataset) -> xr.Dataset:
    """``margin_mode`` as uint8 flag codes (0 cross, 1 isolated, 255 anything else)."""
    mode = ds.get("margin_mode")
    if mode is None or mode.dtype.kind not in "UTO":
        return ds
    codes = xr.apply_ufunc(_mode_codes, mode, dask="parallelized", output_dtypes=[np.uint8],
                           keep_attrs=False)
    attrs = dict(mode.attrs, flag_values=list(range(len(MARGIN_MODES))), flag_meanings=" ".join(MARGIN_MODES))
    return ds.assign(margin_mode=codes.assign_attrs(attrs))


def decode_margin_mode(ds: xr.Dataset) -> xr.Dataset:
    """Back to strings (``<U8``) where ``margin_mode`` holds flag codes; lazily where lazy."""
    mode = ds.get("margin_mode")
    if mode is None or mode.dtype.kind not in "iu" or "flag_meanings" not in mode.attrs:
        return ds
    if tuple(mode.attrs["flag_meanings"].split()) != MARGIN_MODES:
        raise InputError(f"margin_mode flag_meanings {mode.attrs['flag_meanings']!r}, expected "
                         f"{' '.join(MARGIN_MODES)!r}", store=ds.attrs.get("store"), variable="margin_mode")
    names = xr.apply_ufunc(_mode_names, mode, dask="parallelized", output_dtypes=[_MODE_TABLE.dtype],
                           keep_attrs=False)
    attrs = {k: v for k, v in mode.attrs.items() if k not in ("flag_values", "flag_meanings")}
    return ds.assign(margin_mode=names.assign_attrs(attrs))


def write_positions(ds: xr.Dataset, path: PathLike, date: Any,
                    chunk_rows: int = ACCOUNT_CHUNK_ROWS) -> str:
    """Write one as-of date of positions as a complete group (validated first)."""
    validate_positions(ds, store=str(path))
    init_store(path, "positions")
    key = day_key(date)
    ds = encode_margin_mode(_with_attrs(ds, POSITION_VARS))
    ds.attrs["date"] = key
    ds.attrs[QC_ATTR] = {"rules": QC_RULES_VERSION, "rows": int(ds.sizes["account"]), "bad_rows": 0}
    write_day_dataset(ds, path, key, {"account": chunk_rows})
    return key


def positions_writer(path: PathLike, date: Any, accounts: np.ndarray, assets: list[str],
                     instruments: list[str], chunk_rows: int = ACCOUNT_CHUNK_ROWS) -> RegionWriter:
    """A :class:`RegionWriter` for one as-of date, written account slab by account slab."""
    init_store(path, "positions")
    key = day_key(date)
    sizes = {"account": len(accounts), "asset": len(assets), "instrument": len(instruments)}
    variables = {}
    for name, var in POSITION_VARS.items():
        if name == "margin_mode":
            variables[name] = (var.dims, np.dtype(np.uint8), describe(var) | {
                "flag_values": list(range(len(MARGIN_MODES))), "flag_meanings": " ".join(MARGIN_MODES)})
        else:
            variables[name] = (var.dims, np.dtype("float64"), describe(var))
    coords = {"account": ("account", np.asarray(accounts, dtype=np.int64)),
              "asset": ("asset", np.asarray(assets, dtype=object)),
              "instrument": ("instrument", np.asarray(instruments, dtype=object))}
    template = _lazy_template(coords, variables, sizes, {"account": chunk_rows})
    template.attrs["date"] = key
    return RegionWriter(template, path, key, "account", chunk_rows, encode=encode_margin_mode,
                        before_complete=record_positions_qc)


def record_positions_qc(path: PathLike, group: str) -> dict:
    """Validate a written as-of date of positions in one pass and record the summary."""
    return _record_qc(path, group, lambda ds: positions_qc_summary(decode_margin_mode(ds)))


def positions_dates(path: PathLike) -> list[str]:
    _open_root(path, "positions")
    return complete_days(path)


def _pick_date(path: PathLike, dates: list[str], date: Any, kind: str) -> str:
    if not dates:
        raise InputError(f"no complete as-of date in the {kind} store", store=str(path))
    if date is None:
        return dates[-1]
    key = day_key(date)
    if key not in dates:
        raise InputError(f"as-of date {key} not in the {kind} store (have {dates[0]}..{dates[-1]})",
                         store=str(path))
    return key


def open_positions(path: PathLike, date: Any = None, *, market: xr.Dataset | None = None,
                   validate: bool = True, on_bad_rows: OnBadRows = "raise",
                   chunks: Any = None, trust_recorded: bool = True) -> xr.Dataset:
    """Open the positions of one as-of date (the latest by default), lazily.

    With ``market`` given, unknown instruments and assets are checked too. An as-of date
    whose recorded validation (written with it) says it is clean is not read to be validated
    again, unless ``trust_recorded=False``.
    """
    key = _pick_date(path, positions_dates(path), date, "positions")
    ds = open_day_dataset(path, key, chunks)
    sealed = is_sealed(path, key, ds.encoding)
    summary = ds.attrs.pop(QC_ATTR, None)
    ds.attrs.update(date=key, store=str(path))
    ds = decode_margin_mode(ds)
    if validate and trust_recorded and sealed and is_clean_summary(summary, ds.sizes["account"]):
        trusted = positions_without_bad_rows(ds, market, on_bad_rows=on_bad_rows)
        if trusted is not None:
            return trusted
    if validate:
        ds = validate_positions(ds, market, store=str(path), on_bad_rows=on_bad_rows)
    return ds


# ------------------------------------------------------------------------- market


def write_market(ds: xr.Dataset, path: PathLike, date: Any) -> str:
    """Write one as-of date of market parameters as a complete group (validated first)."""
    validate_market(ds, store=str(path))
    init_store(path, "market")
    key = day_key(date)
    ds = _with_attrs(ds, MARKET_ASSET_VARS, MARKET_INSTRUMENT_VARS, MARKET_BRACKET_VARS)
    ds.attrs["date"] = key
    write_day_dataset(ds, path, key)
    return key


def market_dates(path: PathLike) -> list[str]:
    _open_root(path, "market")
    return complete_days(path)


def market_from_dict(spec: dict, *, source: str | None = None) -> xr.Dataset:
    """Build a market Dataset from a mapping (the YAML/TOML layout of docs/data.md)::

        date: 2026-01-02
        assets: {USDT: {price: 1, haircut: 0, beta: 0}, BTC: {price: 60000, haircut: 0.05}}
        instruments:
          BTCUSDT: {kind: linear, underlying: BTC, mark_price: 60000,
                    brackets: [[0, 0.004, 0], [50000, 0.005, 50]]}
          BTC-C-70000: {kind: option, underlying: BTC, mark_price: 1234.5, strike: 70000,
                        expiry: 2026-03-27, call_put: call, implied_vol: 0.55}
    """
    try:
        assets = spec["assets"]
        instruments = spec["instruments"]
    except KeyError as exc:
        raise SchemaError(f"market spec lacks the section {exc.args[0]!r}", store=source) from exc
    asset_names = list(assets)
    inst_names = list(instruments)
    n_brackets = max([len(v.get("brackets", [])) for v in instruments.values()] + [1])
    floor = np.full((len(inst_names), n_brackets), np.nan)
    mmr = np.full_like(floor, np.nan)
    amount = np.full_like(floor, np.nan)
    for i, name in enumerate(inst_names):
        for j, row in enumerate(instruments[name].get("brackets", [])):
            floor[i, j], mmr[i, j] = float(row[0]), float(row[1])
            amount[i, j] = float(row[2]) if len(row) > 2 else np.nan
    get = lambda table, names, key, default: [table[n].get(key, default) for n in names]  # noqa: E731
    ds = xr.Dataset(
        {
            "price": ("asset", np.array(get(assets, asset_names, "price", np.nan), dtype=float)),
            "haircut": ("asset", np.array(get(assets, asset_names, "haircut", 0.0), dtype=float)),
            "beta": ("asset", np.array(get(assets, asset_names, "beta", 1.0), dtype=float)),
            "kind": ("instrument", np.array(get(instruments, inst_names, "kind", ""), dtype=str)),
            "underlying": ("instrument", np.array(get(instruments, inst_names, "underlying", ""), dtype=str)),
            "mark_price": ("instrument", np.array(get(instruments, inst_names, "mark_price", np.nan), dtype=float)),
            "strike": ("instrument", np.array(get(instruments, inst_names, "strike", np.nan), dtype=float)),
            "expiry": ("instrument", np.array([np.datetime64(pd.Timestamp(e)) if e is not None else np.datetime64("NaT")
                                                for e in get(instruments, inst_names, "expiry", None)], dtype="datetime64[ns]")),
            "call_put": ("instrument", np.array(get(instruments, inst_names, "call_put", ""), dtype=str)),
            "implied_vol": ("instrument", np.array(get(instruments, inst_names, "implied_vol", np.nan), dtype=float)),
            "notional_floor": (("instrument", "bracket"), floor),
            "mmr": (("instrument", "bracket"), mmr),
            "maintenance_amount": (("instrument", "bracket"), amount),
        },
        coords={"asset": np.array(asset_names, dtype=str), "instrument": np.array(inst_names, dtype=str),
                "bracket": np.arange(n_brackets)},
    )
    if "date" in spec:
        ds.attrs["date"] = day_key(spec["date"])
    return ds


def open_market(path: PathLike, date: Any = None, *, validate: bool = True) -> xr.Dataset:
    """Open market parameters: a Zarr market store (one as-of date; the latest by default)
    or a YAML/TOML file in the layout of :func:`market_from_dict`. Loaded in memory (small)."""
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml", ".toml"):
        text = p.read_text()
        try:
            spec = tomllib.loads(text) if p.suffix.lower() == ".toml" else yaml.safe_load(text)
        except Exception as exc:
            raise SchemaError(f"cannot parse market file: {exc}", store=str(path)) from exc
        ds = market_from_dict(spec, source=str(path))
    else:
        key = _pick_date(path, market_dates(path), date, "market")
        ds = open_day_dataset(path, key).load()
        for name in ("kind", "underlying", "call_put"):
            if name in ds:
                ds[name] = ds[name].copy(data=as_str(ds[name].values))
        ds.attrs.update(date=key)
    ds.attrs["store"] = str(path)
    if validate:
        validate_market(ds, store=str(path))
    return ds


# ------------------------------------------------------------------------ results


def results_days(path: PathLike) -> list[str]:
    if not Path(str(path)).exists():
        return []
    _open_root(path, "results")
    return complete_days(path)


FINGERPRINTS = "gpu_risk_fingerprints"
WRITER_LOCK_SUFFIX = ".writer.lock"  # results.zarr -> results.zarr.writer.lock


@contextlib.contextmanager
def exclusive_writer(path: PathLike, what: str = "results"):
    """Hold the store's writer lock while the block runs: a second writer is refused at
    once, in one line, instead of interleaving its days with ours. An OS file lock
    (``flock``), so a killed writer never leaves it held; it covers writers on one machine
    (or a file system with working ``flock``), not several hosts on NFS."""
    import fcntl  # noqa: PLC0415

    # beside the store, not in it: taken before the store itself is created, so that two
    # writers never race to create it either
    lock_path = Path(str(path)).with_name(Path(str(path)).name + WRITER_LOCK_SUFFIX)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 (held for the whole block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RuntimeError(f"{path} is being written by {holder}; wait for it to finish or "
                               "write to another store") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        init_store(path, what)
        yield
    finally:
        handle.close()


def write_results_day(path: PathLike, date: Any, families: dict[str, xr.Dataset],
                      chunks: dict[str, dict[str, int]] | None = None,
                      fingerprints: dict[str, str] | None = None) -> None:
    """Write one day's results, one group per family (``chunks[family]``: Zarr chunk sizes
    by dim; one chunk by default); the day becomes visible (complete) only after every
    family is written. Lazy datasets are computed here, on the active Dask scheduler.

    ``fingerprints`` (workflow family -> what made its results): with them, the groups of
    families not written now are kept (a day can gain a family, or have one recomputed,
    without losing the others) and the day records the fingerprints; without, the day is
    written afresh. A partial day from a killed run is never complete, so it is redone."""
    init_store(path, "results")
    key = day_key(date)
    keep = fingerprints is not None and is_complete(path, key)
    previous = results_fingerprints(path, key) if keep else {}
    day = zarr.open_group(str(path), path=key, mode="a" if keep else "w", zarr_format=3)
    day.attrs.update({COMPLETE: False, "date": key})
    for family, ds in families.items():
        write_day_dataset(ds, path, f"{key}/{family}", (chunks or {}).get(family))
    if fingerprints is not None:
        day.attrs[FINGERPRINTS] = {**previous, **fingerprints}
    _crash_point("after-families")
    mark_complete(path, key)


def results_fingerprints(path: PathLike, date: Any) -> dict[str, str]:
    """The fingerprint of each family a complete results day holds ({} if none recorded)."""
    key = day_key(date)
    if not is_complete(path, key):
        return {}
    found = zarr.open_group(str(path), path=key, mode="r", zarr_format=3).attrs.get(FINGERPRINTS)
    return dict(found) if isinstance(found, dict) else {}


RUN_STAGES = "gpu_risk_stages"


def record_run_stages(path: PathLike, date: Any, stages: dict) -> None:
    """Record where a complete day's run spent its time on the day's group (the report
    shows it); written after the day is complete, as it includes the writing."""
    zarr.open_group(str(path), path=day_key(date), mode="r+", zarr_format=3).attrs[RUN_STAGES] = stages


def run_stages(path: PathLike) -> dict[str, dict]:
    """The recorded time breakdown of each complete day that has one."""
    out = {}
    for key in results_days(path):
        stages = zarr.open_group(str(path), path=key, mode="r", zarr_format=3).attrs.get(RUN_STAGES)
        if isinstance(stages, dict):
            out[key] = stages
    return out


def open_results(path: PathLike, families: Iterable[str] | None = None) -> xr.DataTree:
    """The complete days of a results store as a DataTree ``/<date>/<family>``."""
    nodes: dict[str, xr.Dataset] = {}
    for key in results_days(path):
        for family in child_groups(path, key):
            if families is None or family in families:
                nodes[f"/{key}/{family}"] = open_day_dataset(path, f"{key}/{family}")
    tree = xr.DataTree.from_dict(nodes)
    tree.attrs = {"store": str(path)}
    return tree


def _crash_point(name: str) -> None:
    """Test hook: GPU_RISK_CRASH_AT=<name>[:<n>] sends SIGKILL to this process at the n-th
    visit of a named point, so the kill-and-resume tests kill a run mid-write at a known
    place (never set in production)."""
    target = os.environ.get("GPU_RISK_CRASH_AT")
    if not target:
        return
    point, _, count = target.partition(":")
    if point != name:
        return
    seen = int(os.environ.get("_GPU_RISK_CRASH_SEEN", "0")) + 1
    os.environ["_GPU_RISK_CRASH_SEEN"] = str(seen)
    if seen >= int(count or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
