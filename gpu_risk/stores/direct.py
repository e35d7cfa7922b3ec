"""A day group held in memory, written without xarray's and zarr's per-array machinery.

Writing a results day through ``Dataset.to_zarr`` costs about 80 ms of metadata work (a
dozen arrays created one after another through zarr's event loop) before a byte of data,
and then encodes the chunks on one thread: more than the imbalance kernel's whole day.
Here the group's and every array's ``zarr.json`` are written as the JSON that xarray and
zarr write for the same dataset and encoding, and the chunks are encoded (the same codec
calls zarr makes) and written on threads. The tests compare every metadata document and
every chunk file with xarray's writer. Datasets with anything else (lazy arrays, bools,
CF scaling, object data) go through xarray.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..coding import TICKS_ATTR
from ..timing import in_context, timed_task
from .ticked import crc32c

_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
# what zarr gives a variable-length string array (xarray sets no compressor for strings)
_STRING_CODECS = [{"name": "vlen-utf8", "configuration": {}},
                  {"name": "zstd", "configuration": {"level": 0, "checksum": False}}]
SMALL_DAY_BYTES = 4 << 20  # below this much data (counted per chunk's array), one thread writes the day
# chunk files encoded and written at once, one per core (Blosc and file writes release the GIL)
WRITE_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _json(value: Any) -> Any:
    """Attribute values as zarr stores them in JSON (NumPy values as Python ones; NaN as
    the string zarr writes for it)."""
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return value


def _codecs(dtype: np.dtype, compressors) -> list[dict] | None:
    """The codec chain zarr records for ``dtype`` and the encoding's ``compressors``
    (Blosc and CRC-32C only; None for anything else)."""
    if dtype.kind == "T" or dtype.kind in "OU":
        return list(_STRING_CODECS)
    chain = [{"name": "bytes", "configuration": {"endian": "little"}}]
    for codec in compressors:
        d = codec.to_dict()
        if d["name"] == "blosc":
            config = dict(d["configuration"])
            config["typesize"] = dtype.itemsize
            config["shuffle"] = getattr(config["shuffle"], "value", config["shuffle"])
            config["cname"] = getattr(config["cname"], "value", config["cname"])
            chain.append({"name": "blosc", "configuration": config})
        elif d["name"] == "crc32c":
            chain.append({"name": "crc32c"})
        else:
            return None
    return chain


def _encoder(codecs: list[dict]):
    """values (a whole chunk) -> the chunk file's bytes (in pieces), by the same library
    calls zarr makes."""
    import google_crc32c  # noqa: PLC0415
    from numcodecs import blosc  # noqa: PLC0415

    if codecs[0]["name"] == "vlen-utf8":
        from numcodecs import Zstd  # noqa: PLC0415
        from numcodecs.vlen import VLenUTF8  # noqa: PLC0415

        zstd = Zstd(level=0, checksum=False)

        def encode_strings(values: np.ndarray) -> list[bytes]:
            return [bytes(zstd.encode(VLenUTF8().encode(values.astype(object).ravel())))]

        return encode_strings
    blosc_config = next((c["configuration"] for c in codecs if c["name"] == "blosc"), None)
    checksum = codecs[-1]["name"] == "crc32c"

    def encode(values: np.ndarray) -> list[Any]:
        """The file's pieces (its body, then its checksum; buffers): written one after the
        other rather than joined, which would copy the body once more."""
        data = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False))
        if blosc_config is None:  # the values' own bytes: no copy of them
            raw = data.reshape(-1).view(np.uint8)
            return [raw, crc32c(raw).to_bytes(4, "little")] if checksum else [raw]
        body = blosc.compress(data, blosc_config["cname"].encode(), int(blosc_config["clevel"]),
                              _BLOSC_SHUFFLE[blosc_config["shuffle"]], int(blosc_config["blocksize"]))
        return [body, google_crc32c.value(body).to_bytes(4, "little")] if checksum else [body]

    return encode


def _array_document(values: np.ndarray, dims: tuple[str, ...], chunks: tuple[int, ...], codecs: list[dict],
                    fill: Any, attrs: dict) -> dict:
    string = values.dtype.kind in "TOU"
    return {"shape": list(values.shape), "data_type": "string" if string else values.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": _json(fill), "codecs": codecs, "attributes": _json(attrs),
            "dimension_names": list(dims), "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def plan_day(ds: xr.Dataset, encoding: Mapping[str, dict]) -> list[tuple] | None:
    """What xarray would write for each variable of ``ds`` (prepared by ``days._prepare``)
    with ``encoding`` (``days._encoding``): (name, stored values, metadata document); None
    where a variable is outside what :func:`write_planned` writes."""
    from xarray.backends.zarr import FillValueCoder  # noqa: PLC0415
    from zarr.core.chunk_grids import normalize_chunks  # noqa: PLC0415

    variables, _ = xr.conventions.encode_dataset_coordinates(ds)
    out = []
    for name, var in variables.items():
        data = var.data
        if not isinstance(data, np.ndarray) or not var.ndim or data.dtype.kind not in "fiMOT":
            return None
        enc = dict(encoding.get(str(name), {}))
        attrs = dict(var.attrs)
        # a book's ticked arrays carry their CF scale as attributes (the encoding holds none:
        # xarray writes them as they are); anything else CF-scaled is xarray's to encode
        ticked = data.dtype == np.int32 and TICKS_ATTR in attrs
        if {"_FillValue", "dtype"} & set(attrs) or (not ticked and {"scale_factor", "add_offset"} & set(attrs)):
            return None
        values = data
        if data.dtype.kind == "M":
            if ({"units", "calendar"} & set(attrs) or np.isnat(data).any()
                    or data.dtype != np.dtype("datetime64[ns]") or enc.get("units") is None):
                return None
            values = data.view(np.int64)
            attrs.update(units=enc["units"], calendar=enc["calendar"])
        if values.dtype.kind == "O" and not all(isinstance(v, str) for v in values.ravel()):
            return None
        string = values.dtype.kind in "OT"
        codecs = _codecs(values.dtype, enc.get("compressors", ()))
        if codecs is None or (not string and "compressors" not in enc):
            return None
        if values.dtype.kind == "f":
            if "_FillValue" in enc:
                return None
            fill = enc.get("fill_value", np.nan)
            attrs["_FillValue"] = FillValueCoder.encode(np.nan, values.dtype)
        else:
            fill = "" if string else enc.get("fill_value", 0)
            if "_FillValue" in enc:  # an integer fill value (a ticked array's empty level)
                attrs["_FillValue"] = FillValueCoder.encode(enc["_FillValue"], values.dtype)
        chunks = enc.get("chunks")
        if chunks is None:
            chunks = normalize_chunks(None, values.shape, 16 if string else values.dtype.itemsize)
        out.append((str(name), values, _array_document(values, var.dims, tuple(chunks), codecs, fill, attrs)))
    return out


def new_group(root: Path, group: str, attrs: dict) -> Path:
    """Make ``group`` of the local store at ``root`` an empty group with ``attrs``, replacing
    what is there (what zarr's opening with mode "w" leaves; the groups above it made as
    zarr makes them where missing); its directory."""
    import shutil  # noqa: PLC0415

    folder = root / group
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    parts = group.strip("/").split("/")
    for depth in range(1, len(parts)):  # the groups between the store's root and this one
        parent = root.joinpath(*parts[:depth])
        if not (parent / "zarr.json").exists():
            (parent / "zarr.json").write_text(json.dumps(
                {"attributes": {}, "zarr_format": 3, "node_type": "group"}, indent=2))
    (folder / "zarr.json").write_text(json.dumps(
        {"attributes": _json(attrs), "zarr_format": 3, "consolidated_metadata": None, "node_type": "group"},
        indent=2))
    return folder


def write_planned(root: Path, group: str, group_attrs: dict, planned: list[tuple]) -> None:
    """Write the group ``group`` of the store at ``root`` (replacing what is there; the
    groups above it made as zarr makes them where missing): its ``zarr.json``, each array's
    ``zarr.json``, then every chunk, on threads. Edge chunks are padded with the fill
    value and chunks that hold only the fill value are not written, as zarr does."""
    folder = new_group(root, group, group_attrs)
    jobs = []
    for name, values, document in planned:
        (folder / name).mkdir()
        (folder / name / "zarr.json").write_text(json.dumps(document, indent=2))
        shape = tuple(document["chunk_grid"]["configuration"]["chunk_shape"])
        encode = _encoder(document["codecs"])
        fill = document["fill_value"]
        grid = [range(-(-n // c)) for n, c in zip(values.shape, shape)]
        jobs += [(folder / name, values, encode, fill, shape, index) for index in itertools.product(*grid)]

    def write(job) -> None:
        with timed_task("write"):
            write_chunk(*job)

    def write_chunk(where, values, encode, fill, shape, index) -> None:
        part = values[tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, shape, values.shape))]
        first = part.flat[0]  # a chunk that starts with a value is not all fill value: no need to look
        if values.dtype.kind == "f" and fill == "NaN":
            if first != first and np.isnan(part).all():
                return
            fill_value: Any = np.nan
        else:
            fill_value = fill
            if first == fill and (part == fill).all():
                return
        if values.dtype.kind in "fi":  # gathered into the thread's buffer (a fresh one is page-faulted in)
            whole = _chunk_buffer(shape, values.dtype)
            if part.shape != shape:  # an edge chunk is stored whole, padded with the fill value
                whole.fill(fill_value)
            whole[tuple(slice(0, n) for n in part.shape)] = part
            part = whole
        elif part.shape != shape:
            whole = np.full(shape, fill_value, dtype=values.dtype)
            whole[tuple(slice(0, n) for n in part.shape)] = part
            part = whole
        file = where.joinpath("c", *map(str, index))
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(file, "wb") as out:
            out.writelines(encode(part))

    if sum(job[1].nbytes for job in jobs) < SMALL_DAY_BYTES or len(jobs) < 2:
        for job in jobs:  # a small day: starting threads would cost more than they save
            write(job)
        return
    list(_writer_pool().map(in_context(write), jobs))


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_buffers = threading.local()


def _writer_pool() -> ThreadPoolExecutor:
    """The writing threads, kept from day to day with their chunk buffers (a chunk of each
    shape a day has: about 15 MB per thread for a 1 s imbalance grid)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="gpu_risk-write")
        return _pool


def _chunk_buffer(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """This thread's buffer for a chunk of ``shape`` and ``dtype``."""
    cache = getattr(_buffers, "by_shape", None)
    if cache is None:
        cache = _buffers.by_shape = {}
    key = (tuple(shape), np.dtype(dtype).str)
    found = cache.get(key)
    if found is None:
        if len(cache) >= 16:  # shapes a run no longer writes: the oldest goes
            cache.pop(next(iter(cache)))
        found = cache[key] = np.empty(shape, dtype=dtype)
    return found
