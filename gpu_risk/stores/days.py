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

This module: the atomic day groups every store is made of, their seals, and the one-writer lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from ..coding import (
    TICK_FILL,
    TICKED_VARS,
    TICKS_ATTR,
    cf_scale_factor,
    decode_ticked,
)
from ..errors import InputError, SchemaError
from ..schema import as_str, describe
from . import direct, ticked

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


def ensure_store(path: PathLike, kind: str) -> None:
    """:func:`init_store` for writers that need only the check: a local store whose root
    metadata already names ``kind`` is checked from that file alone (zarr's opening costs
    a few milliseconds, once per day written)."""
    root = Path(str(path))
    if _is_local_store(path, kind):
        return
    if not root.exists() and root.parent.is_dir():  # a new local store: its root as zarr writes it
        root.mkdir()
        (root / "zarr.json").write_text(json.dumps(
            {"attributes": {STORE_KIND: kind, "schema_version": SCHEMA_VERSION}, "zarr_format": 3,
             "node_type": "group"}, indent=2))
        return
    init_store(path, kind)


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


def _open_root(path: PathLike, kind: str) -> None:
    """Check that ``path`` is a ``kind`` store (a local store's root document read alone:
    zarr's opening costs a millisecond or more, once per instrument and day opened)."""
    if _is_local_store(path, kind):
        return
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


def _is_local_store(path: PathLike, kind: str) -> bool:
    """Whether ``path`` is a local store whose root document names it a ``kind`` store."""
    meta = _local_group_document(path, "")
    return meta is not None and meta.get("attributes", {}).get(STORE_KIND) == kind


def _local_group_document(path: PathLike, group: str) -> dict | None:
    """A local group's ``zarr.json`` as a dict (None where it is not a readable local group)."""
    try:
        meta = json.loads((Path(str(path)) / group / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group" or not isinstance(meta.get("attributes", {}),
                                                                                         dict):
        return None
    return meta


def group_attrs(path: PathLike, group: str = "") -> dict:
    """A group's attributes: its metadata file read directly in a local store (zarr's
    opening costs a millisecond or more each time)."""
    meta = _local_group_document(path, group)
    if meta is not None:
        return dict(meta.get("attributes", {}))
    return dict(zarr.open_group(str(path), path=group or None, mode="r", zarr_format=3).attrs)


def update_group_attrs(path: PathLike, group: str, update: dict) -> None:
    """Set some of a group's attributes (a local group's ``zarr.json`` replaced atomically)."""
    if not _update_local_attrs(path, group, update):
        zarr.open_group(str(path), path=group or None, mode="r+", zarr_format=3).attrs.update(update)


def child_groups(path: PathLike, group: str = "") -> list[str]:
    """Sorted names of the child groups of ``group``."""
    local = Path(str(path)) / group
    if _local_group_document(path, group) is not None:  # a directory listing, not zarr's
        with os.scandir(local) as entries:
            return sorted(e.name for e in entries if e.is_dir() and _local_group_document(path, f"{group}/{e.name}"
                                                                                           if group else e.name))
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    node = root[group] if group else root
    if not isinstance(node, zarr.Group):
        raise SchemaError(f"{group!r} in {str(path)!r} is an array, not a group", store=str(path))
    return sorted(name for name, _ in node.groups())


def is_complete(path: PathLike, group: str) -> bool:
    meta = _local_group_document(path, group)  # a local group's document read alone (zarr's opening: ~1 ms)
    if meta is not None:
        return bool(meta.get("attributes", {}).get(COMPLETE, False))
    try:
        node = zarr.open_group(str(path), path=group, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError):
        return False
    return bool(node.attrs.get(COMPLETE, False))


DAY_INDEX = "gpu_risk_days"  # an instrument-arrays book instrument's days (stores/book_arrays.py)
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
    def newest(folder: str, top: bool) -> int:
        latest = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                if top and entry.name == "zarr.json":
                    continue
                latest = max(latest, entry.stat(follow_symlinks=False).st_mtime_ns)
                if entry.is_dir(follow_symlinks=False):
                    latest = max(latest, newest(entry.path, False))
        return latest

    return newest(str(root), True)


def is_sealed(path: PathLike, group: str, attrs: dict) -> bool:
    """Whether nothing under ``group`` (a chunk written, truncated or deleted, an array's
    metadata) changed since it was completed: what its recorded validation may be trusted
    on. ``attrs``: the group's attributes, or an opened day's ``encoding``, holding the seal."""
    if not seal_holds(attrs, _latest_change_ns(path, group)):
        return False
    # a whole subgroup or array removed changes only the group's own directory, which the
    # seal cannot watch (completing the group changes it): its recorded chunks say it existed
    recorded = attrs.get(MANIFEST)
    root = Path(str(path)) / group
    return not isinstance(recorded, dict) or all((root / top).is_dir()
                                                 for top in {key.split("/", 1)[0] for key in recorded})


def seal_holds(attrs: dict, latest: int | None) -> bool:
    """:func:`is_sealed` for a group whose latest change (``_latest_change_ns``) is known."""
    sealed = attrs.get(SEAL)
    return isinstance(sealed, int) and latest is not None and latest <= sealed


def mark_complete(path: PathLike, group: str) -> None:
    """Make ``group`` visible to readers; its new write id tells results made from an
    earlier version of it (an input day rewritten since) from results made from this one,
    and its seal lets a later reader see whether anything under it changed since."""
    import uuid  # noqa: PLC0415

    update: dict[str, Any] = {COMPLETE: True, WRITE_ID: uuid.uuid4().hex, SEAL: _latest_change_ns(path, group),
              MANIFEST: chunk_manifest(path, group)}
    update_group_attrs(path, group, update)


def _update_local_attrs(path: PathLike, group: str, update: dict) -> bool:
    """Update a local group's attributes by rewriting its ``zarr.json`` (written to a new
    file, then renamed over the old one: a reader sees the old or the new document, never
    part of one); False where the group is not a local directory with that file."""
    meta_path = Path(str(path)) / group / "zarr.json"
    meta = _local_group_document(path, group)
    if meta is None:
        return False
    meta["attributes"] = {**meta.get("attributes", {}), **update}
    meta.setdefault("consolidated_metadata", None)  # as zarr writes a group's document back
    partial = meta_path.with_name(f".zarr.json.{os.getpid()}.{threading.get_ident()}.partial")
    partial.write_text(json.dumps(meta, indent=2))
    os.replace(partial, meta_path)
    return True


MANIFEST = "gpu_risk_manifest"  # every chunk file under a completed group: {key: bytes}


def chunk_manifest(path: PathLike, group: str) -> dict[str, int] | None:
    """The chunk files under a local group and their sizes (key relative to the group:
    ``array/c/0/1``); None for a store that is not a local directory."""
    root = Path(str(path)) / group
    if not root.is_dir():
        return None
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name == "zarr.json":
                continue
            entry = Path(folder) / name
            found[entry.relative_to(root).as_posix()] = entry.stat().st_size
    return found


def manifest_problems(path: PathLike, group: str, recorded: Any, *, extra_ok: bool = False) -> list[str]:
    """What differs between the chunk files under ``group`` and its recorded manifest:
    chunks missing or truncated (or grown), and chunks nobody wrote (unless ``extra_ok``:
    an instrument's arrays may hold a killed writer's rows past the committed end); []
    when they agree or nothing was recorded."""
    if not isinstance(recorded, dict):
        return []
    now = chunk_manifest(path, group) or {}
    where = f"{path}/{group}"
    problems = [f"{where}: chunk {key} is missing" for key in sorted(set(recorded) - set(now))]
    problems += [f"{where}: chunk {key} has {now[key]} bytes, {recorded[key]} when written"
                 for key in sorted(set(recorded) & set(now)) if now[key] != recorded[key]]
    if not extra_ok:
        problems += [f"{where}: chunk {key} was not written with the day"
                     for key in sorted(set(now) - set(recorded))]
    return problems


def _read_chunk(path: PathLike, group: str, key: str) -> None:
    """Read the chunk file ``key`` (``array/c/i/j``, relative to ``group``) through zarr."""
    name, _, index = key.partition("/c")
    array = zarr.open_array(str(path), path=f"{group}/{name}", mode="r", zarr_format=3)
    array[chunk_region(array, [int(i) for i in index.strip("/").split("/") if i])]


def chunk_region(array: zarr.Array, index) -> tuple[slice, ...]:
    """The selection of the chunk at grid position ``index`` of ``array``."""
    return tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, array.chunks, array.shape))


def check_manifest(path: PathLike, group: str, attrs: dict, *, extra_ok: bool = False) -> None:
    """For a day changed since it was completed: raise an :class:`InputError` naming the
    first chunk that is missing (it would read as the fill value) or that changed and no
    longer reads (truncated, or failing its checksum). Chunks rewritten with readable data
    are left to validation, which reads and checks their values."""
    recorded = attrs.get(MANIFEST)
    if not isinstance(recorded, dict):
        return
    now = chunk_manifest(path, group) or {}
    where = f"{path}/{group}"
    missing = sorted(set(recorded) - set(now))
    if missing:
        more = f" ({len(missing)} chunks missing in all; gpu-risk verify lists them)" if len(missing) > 1 else ""
        raise InputError(f"damaged store: {where}: chunk {missing[0]} is missing{more}", store=str(path))
    for key in sorted(k for k in recorded if now[k] != recorded[k]):
        try:
            _read_chunk(path, group, key)
        except Exception as exc:  # the codec that meets the damage raises
            raise InputError(f"damaged store: {where}: chunk {key} cannot be read ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})", store=str(path)) from None


def day_identity(path: PathLike, group: str) -> str:
    """What identifies the current version of a complete group: its write id; for groups
    written before write ids existed, the modification time of its metadata (a rewrite
    changes it). A day of an instrument-arrays book instrument (``<instrument>/<day>``):
    the write id its index records."""
    parent, _, day = group.rpartition("/")
    if parent and not (Path(str(path)) / group).exists():
        index = zarr.open_group(str(path), path=parent, mode="r", zarr_format=3).attrs.get(DAY_INDEX)
        if isinstance(index, dict) and day in index:
            return str(index[day].get("write_id"))
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


SHARED_DAY_ATTRS = ("size_units", "tick_size")  # what a book says of itself, kept when days agree


def shared_day_attrs(per_day: list[dict]) -> dict:
    """The descriptive attributes every day of an instrument has alike (its size units,
    its tick), for the instrument's book over those days."""
    out = {}
    for key in SHARED_DAY_ATTRS:
        values = [d.get(key) for d in per_day]
        if values and values[0] is not None and all(v == values[0] for v in values):
            out[key] = values[0]
    return out


def check_within_day(times: np.ndarray, day: str, *, store: str, instrument: str, offset: int = 0,
                     in_order: bool = False) -> None:
    """Every snapshot time of a stored day must fall on that UTC day (SPEC: snapshots
    outside their day are bad input); the error names the first one outside.
    ``in_order``: the times are known sorted, with no NaT (a day whose recorded validation
    holds): its first and last are checked."""
    t = np.asarray(times).astype("datetime64[ns]", copy=False)
    lo = np.datetime64(day, "ns")
    ends = t[[0, -1]] if in_order and t.size else t
    if t.size and ends.min() >= lo and ends.max() < lo + np.timedelta64(1, "D"):  # NaT compares false: below
        return
    outside = (t < lo) | (t >= lo + np.timedelta64(1, "D"))
    outside &= ~np.isnat(t)  # NaT is validation's (qc_time_order)
    if outside.any():
        i = int(np.argmax(outside))
        raise InputError(f"snapshot outside its day {day}", store=store, variable="time", instrument=instrument,
                         index=offset + i, label=str(t[i]), count=int(outside.sum()))


def _select_days(days: Iterable[str], start: Any, end: Any) -> list[str]:
    lo = day_key(start) if start is not None else None
    hi = day_key(end) if end is not None else None
    return [d for d in days if (lo is None or d >= lo) and (hi is None or d <= hi)]


def complete_days(path: PathLike, group: str = "", start: Any = None, end: Any = None) -> list[str]:
    """Names of the complete day groups under ``group``, in [start, end] when given (a day
    being rewritten lives in a sibling group with a suffix until it replaces the old one,
    and is not listed); only days in the range are opened to check that they are complete."""
    days = _select_days(_day_names(path, group), start, end)
    return [d for d in days if is_complete(path, f"{group}/{d}".strip("/"))]


def unfinished_days(path: PathLike, group: str = "", start: Any = None, end: Any = None,
                    complete: Iterable[str] | None = None) -> list[str]:
    """Day groups under ``group`` in [start, end] that exist but are not complete: a write
    that did not finish (or is under way), or a group whose metadata was lost. Readers do
    not see them; a batch that would silently leave them out asks for them by name.
    ``complete``: the group's complete days where already listed (no group is opened then)."""
    days = _select_days(_day_names(path, group), start, end)
    if complete is not None:
        done = set(complete)
        return [d for d in days if d not in done]
    return [d for d in days if not is_complete(path, f"{group}/{d}".strip("/"))]


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
# Every chunk carries a CRC-32C of its compressed bytes (Zarr 3's crc32c codec): a chunk
# damaged in place fails when read instead of decoding to other numbers (within the noise
# of reading, up to 13 % of the codecs' write time: benchmarks/checksums.py).
NUMBER_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"), Crc32cCodec())
# book prices and sizes as exact int32 ticks (gpu_risk.coding): byte shuffle then LZ4
TICK_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())
# A store may instead keep its numbers uncompressed (each chunk still with its CRC-32C):
# 2.9x the disk of the ticks above, but a batch that reads them from the page cache or a
# fast local disk maps them straight into memory instead of decompressing them
# (docs/performance.md, "Store format"). Recorded on the store's root; it applies to
# the days written from then on (each array's codecs are in its own metadata, so a store
# may hold both).
COMPRESSION_ATTR = "gpu_risk_compression"
COMPRESSIONS = ("lz4", "none")
UNCOMPRESSED = (Crc32cCodec(),)


def store_compression(path: PathLike) -> str:
    """How the store at ``path`` compresses the days written to it: "lz4" (the default)
    or "none"."""
    found = group_attrs(path, "").get(COMPRESSION_ATTR, "lz4") if Path(str(path)).exists() else "lz4"
    return found if found in COMPRESSIONS else "lz4"


def set_store_compression(path: PathLike, compression: str) -> None:
    """Record ``compression`` ("lz4" or "none") on an existing store: the days written to
    it from now on are compressed so (days already written stay as they are, and read)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    update_group_attrs(path, "", {COMPRESSION_ATTR: compression})


def _encoding(ds: xr.Dataset, chunk_dims: Mapping[Any, int], compression: str = "lz4") -> dict:
    numbers, ticks = (UNCOMPRESSED, UNCOMPRESSED) if compression == "none" else (NUMBER_COMPRESSORS,
                                                                                   TICK_COMPRESSORS)
    enc: dict[str, dict] = {}
    for name, var in ds.variables.items():
        e: dict[str, Any] = {}
        if var.dtype.kind in "fiub" and var.ndim:
            e["compressors"] = numbers
        if TICKS_ATTR in var.attrs and var.dtype == np.int32:
            # the Zarr fill_value too: a missing chunk reads as empty levels, never as 0
            e.update(compressors=ticks, _FillValue=TICK_FILL, fill_value=TICK_FILL)
        if np.issubdtype(var.dtype, np.datetime64):
            e.update(TIME_ENCODING)
            e["compressors"] = numbers
        if var.dims and name not in ds.dims:
            e["chunks"] = tuple(min(chunk_dims.get(d, var.sizes[d]), var.sizes[d]) or 1
                                for d in var.dims)
        if e:
            enc[str(name)] = e
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
    for _name, array in node.arrays():
        factor = cf_scale_factor(dict(array.attrs))
        if factor is not None and "scale_factor" not in array.attrs:
            array.attrs["scale_factor"] = factor


def write_day_dataset(
    ds: xr.Dataset, path: PathLike, group: str, chunk_dims: Mapping[Any, int] | None = None
) -> None:
    """Write ``ds`` to ``group`` atomically: incomplete until every array is written.

    ``ds`` may be Dask-backed: its chunks are rechunked to the Zarr chunks first so that
    no two tasks write one Zarr chunk.
    """
    chunk_dims = chunk_dims or {}
    ds = _prepare(ds)
    enc = _encoding(ds, chunk_dims, store_compression(path))
    if any(v.chunks is not None for v in ds.variables.values()):
        # one Dask chunk per Zarr chunk: no two tasks ever write the same Zarr chunk
        ds = ds.chunk({d: chunk_dims.get(d, -1) for d in ds.dims})
        # small string labels (size_units, ...) stay in memory: a Dask array of strings
        # would be loaded anyway to find its type
        ds = ds.assign_coords({name: ds[name].compute() for name in ds.coords
                               if ds[name].dtype.kind in "OUT" and ds[name].chunks is not None})
    ds.attrs[COMPLETE] = False
    _add_cf_scale_attrs(ds)  # ds is _prepare's copy: the caller's attributes stay as they are
    ds.to_zarr(str(path), group=group, mode="w", encoding=enc, **_zarr_kwargs())
    mark_complete(path, group)


def write_day_in_memory(ds: xr.Dataset, path: PathLike, group: str, chunk_dims: Mapping[Any, int] | None = None
                        ) -> bool:
    """:func:`write_day_dataset` for a dataset held in memory, in a local store: the
    metadata and chunk files xarray writes, written directly (``stores.direct``, about a
    tenth of xarray's time for a results day). False, and nothing written, where a
    variable is outside what that writer handles."""
    if not Path(str(path)).is_dir():
        return False
    prepared = _prepare(ds)
    planned = direct.plan_day(prepared, _encoding(prepared, chunk_dims or {}, store_compression(path)))
    if planned is None:
        return False
    direct.write_planned(Path(str(path)), group, {**ds.attrs, COMPLETE: False}, planned)
    mark_complete(path, group)
    return True


def write_day_direct(ds: xr.Dataset, path: PathLike, group: str, chunk_dims: Mapping[Any, int] | None = None
                     ) -> bool:
    """:func:`write_day_in_memory` for a book day: its ticked arrays get their CF
    ``scale_factor`` as :func:`write_day_dataset` gives it."""
    ds = ds.copy()
    _add_cf_scale_attrs(ds)
    return write_day_in_memory(ds, path, group, chunk_dims)


def _add_cf_scale_attrs(ds: xr.Dataset) -> None:
    """Give each ticked data variable of ``ds`` (a copy: each variable gets a new attribute
    dict) its CF ``scale_factor``, written with the array (xarray scales only by encoding's)."""
    for name in ds.data_vars:
        var = ds.variables[name]
        factor = cf_scale_factor(dict(var.attrs))
        if factor is not None and "scale_factor" not in var.attrs:
            var.attrs = {**var.attrs, "scale_factor": factor}


class RegionWriter:
    """Write a large dataset one slab of ``dim`` at a time, never holding all of it.

    ``template`` holds the coordinates (written at once) and, for each data variable,
    a lazy array of the final shape; slabs are then written into Zarr regions aligned
    to the chunks, and the group is marked complete on :meth:`close`.
    """

    def __init__(self, template: xr.Dataset, path: PathLike, group: str, dim: str, chunk: int,
                 chunk_dims: Mapping[Any, int] | None = None, encode=None, before_complete=None):
        self.path, self.group, self.dim, self.chunk = str(path), group, dim, chunk
        self._before_complete = before_complete  # called with (path, group) before marking complete
        self._encode = encode or (lambda ds: ds)  # applied to each slab before it is written
        chunk_dims = dict(chunk_dims or {})
        chunk_dims[dim] = chunk
        template = _prepare(template)
        template.attrs[COMPLETE] = False
        enc = _encoding(template, chunk_dims, store_compression(path))
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
                   sizes: Mapping[Any, int], chunk_dims: Mapping[Any, int]) -> xr.Dataset:
    data_vars = {}
    for name, (dims, dtype, attrs) in variables.items():
        shape = tuple(sizes[d] for d in dims)
        chunks = tuple(min(chunk_dims.get(d, sizes[d]), sizes[d]) or 1 for d in dims)
        data_vars[name] = xr.Variable(dims, da.empty(shape, dtype=dtype, chunks=chunks), attrs)
    return xr.Dataset(data_vars, coords=coords)


# what zarr raises for metadata it cannot read: named with the group by the readers here
UNREADABLE_METADATA = (json.JSONDecodeError, UnicodeDecodeError, zarr.errors.MetadataValidationError,
                       zarr.errors.UnknownCodecError)


@contextlib.contextmanager
def naming_metadata(path: PathLike, group: str):
    """Within: unreadable Zarr metadata is a :class:`SchemaError` naming the store and group."""
    try:
        yield
    except UNREADABLE_METADATA as exc:
        raise SchemaError(f"unreadable Zarr metadata under {group!r} ({type(exc).__name__}: {exc})",
                          store=str(path)) from exc
    except KeyError as exc:  # xarray's way of saying an array has no dimension names
        if "dimension_names" not in str(exc):
            raise
        raise SchemaError(f"an array under {group!r} has no dimension_names in its Zarr metadata (written "
                          "by a tool that does not record them); xarray cannot tell its dimensions",
                          store=str(path)) from exc


def open_day_dataset(path: PathLike, group: str, chunks: Any = None) -> xr.Dataset:
    # book arrays stored as ticks are decoded by gpu_risk (exactly, one pass per chunk),
    # not by xarray's CF mask-and-scale; a book day is opened from its metadata files
    ds = ticked.open_book_day(path, group) if ticked.DIRECT_READS and not chunks else None
    if ds is not None:
        return _day_bookkeeping(ds)
    # other days through xarray, their time index read by gpu_risk's own reader where it
    # can (xarray's read of it cost most of opening a day)
    time = ticked.read_time(path, group) if ticked.DIRECT_READS and not chunks else None
    with naming_metadata(path, group):
        ds = xr.open_zarr(str(path), group=group, chunks={} if chunks is None else chunks,
                          mask_and_scale=dict.fromkeys(TICKED_VARS, False),
                          drop_variables=["time"] if time is not None else None, **_zarr_kwargs())
    if time is not None:  # with the CF encoding xarray would keep, for writers that honour it
        ds = ds.assign_coords(time=xr.Variable("time", time[0], time[1], encoding={
            "units": TIME_ENCODING["units"], "calendar": TIME_ENCODING["calendar"], "dtype": np.dtype("int64")}))
    if ticked.DIRECT_READS and not chunks:  # the Zarr chunks as the Dask blocks: each read in one task
        for ticked_name in TICKED_VARS:
            if ticked_name in ds.data_vars:
                var = ds[ticked_name].variable
                direct = ticked.direct_variable(path, group, ticked_name, var.attrs, var.dims, ds.attrs.get(WRITE_ID))
                if direct is not None:
                    ds[ticked_name] = direct
    ds = decode_ticked(ds)
    # Variable-length strings come back as numpy StringDType; plain `str` labels index best.
    for name in list(ds.coords):
        if ds[name].dtype.kind in "TO":
            ds = ds.assign_coords({name: ds[name].copy(data=as_str(ds[name].values))})  # dims kept
    return _day_bookkeeping(ds)


def _day_bookkeeping(ds: xr.Dataset) -> xr.Dataset:
    """An opened day without the attributes that are bookkeeping, not data."""
    ds.attrs.pop(COMPLETE, None)
    ds.attrs.pop(WRITE_ID, None)
    # bookkeeping, not data: kept where is_sealed looks for it, out of the dataset's attributes
    ds.encoding[SEAL] = ds.attrs.pop(SEAL, None)
    ds.encoding[MANIFEST] = ds.attrs.pop(MANIFEST, None)
    return ds


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
    handle = open(lock_path, "a+")
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


WRITER_LOCK_SUFFIX = ".writer.lock"  # results.zarr -> results.zarr.writer.lock


def _with_attrs(ds: xr.Dataset, *specs: dict) -> xr.Dataset:
    """A copy of ``ds`` whose variables carry the schema's ``units`` and ``long_name``."""
    ds = ds.copy()
    for spec in specs:
        for name, var in spec.items():
            if name in ds:
                ds[name].attrs.update(describe(var))
    return ds


def _record_qc(path: PathLike, group: str, summarize) -> dict:
    """Validate a written group in one pass (``summarize`` of its opened dataset) and record
    the summary on it, before it is marked complete."""
    summary = summarize(open_day_dataset(path, group))
    zarr.open_group(str(path), path=group, mode="r+", zarr_format=3).attrs[QC_ATTR] = summary
    return summary


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
