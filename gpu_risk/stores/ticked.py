"""A book day's ticked arrays read by gpu_risk itself, chunk file by chunk file.

Every ticked book array is written with one codec chain (``bytes``, Blosc, CRC-32C,
int32 ticks with the ``TICK_FILL`` fill value, regular chunks of whole rows). For those
arrays reading a chunk is: read the file, check its CRC-32C, Blosc-decompress, decode the
ticks; done here in one step, about 3x faster than zarr-python (docs/performance.md), and
into caller-provided buffers where the caller reuses them (a fresh 10 MB buffer per chunk
costs more in page faults than the decompression itself). An array with any other
metadata is read through zarr. The tests compare every value with zarr's read.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ..coding import TICK_FILL, TICKS_ATTR, spec_of
from ..errors import InputError
from ..kernels.ticks import from_ticks_cpu

# book days' ticked arrays read by this module (False: through zarr; the tests compare both)
DIRECT_READS = True

# The codec chains this module decodes, as gpu_risk writes them (stores.days: Blosc, the
# default; or none, for stores kept where reading is cheaper than decompressing)
_DIRECT_CODECS = (["bytes", "blosc", "crc32c"], ["bytes", "crc32c"])
# CRC-32C over a message followed by its own little-endian CRC-32C is always this value:
# a chunk is checked in one pass over the file's bytes, without copying its body out
_CRC32C_RESIDUE = 0x48674BC7


def read_chunk_file(file: str, where: str, store: str, dest: np.ndarray | None = None) -> np.ndarray | None:
    """The Blosc-decompressed bytes of one chunk file (into ``dest``, a flat buffer of
    the chunk's size, when given), after checking its CRC-32C; None where the file is
    missing (zarr reads a missing chunk as the fill value). A damaged chunk is a one-line
    :class:`InputError` naming ``where``."""
    from numcodecs import blosc  # noqa: PLC0415

    data = _checked_file(file, where, store)
    if data is None:
        return None
    body = memoryview(data)[:-4]
    try:
        if dest is None:
            return np.frombuffer(blosc.decompress(body), dtype=np.uint8)
        # a Blosc frame's header holds its decompressed size at bytes 4-8
        if len(body) < 16 or int.from_bytes(body[4:8], "little") != dest.nbytes:
            raise InputError(f"chunk {where} does not hold one whole chunk", store=store)
        blosc.decompress(body, dest)
        return dest
    except InputError:
        raise
    except Exception as exc:  # a corrupt Blosc frame whose checksum still matched
        raise InputError(f"chunk {where} does not decode ({type(exc).__name__})", store=store) from exc


@dataclasses.dataclass(frozen=True)
class TickedChunks:
    """One ticked book array of one day, as its chunk files: ``rows`` x ``levels``, in
    chunks of ``chunk_rows`` whole rows; values are ``ticks / divisor`` (or ``ticks x
    multiplier`` when ``divisor`` is 0), ``TICK_FILL`` an empty level (NaN)."""

    folder: str  # the array's directory, absolute
    store: str  # the store, for messages
    where: str  # "<group>/<array>", for messages
    rows: int
    chunk_rows: int
    levels: int
    divisor: float
    multiplier: float
    compressed: bool = True  # Blosc; else the chunk files hold the ticks themselves

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)

    def chunk_sizes(self) -> tuple[int, ...]:
        return tuple(min(self.chunk_rows, self.rows - start) for start in range(0, self.rows, self.chunk_rows))

    def read(self, i: int, out: np.ndarray | None = None, ticks: np.ndarray | None = None,
             levels: int | None = None) -> np.ndarray:
        """Chunk ``i`` as float64 rows (its first ``levels`` levels; all by default), into
        ``out`` ((rows, levels), C order) when given, using ``ticks`` (int32, one whole
        chunk) as scratch when given. A missing chunk is empty levels."""
        levels = self.levels if levels is None else levels
        n = min(self.chunk_rows, self.rows - i * self.chunk_rows)
        out = np.empty((n, levels)) if out is None else out[:n]
        if not out.flags.c_contiguous or out.shape[1] != levels:
            raise ValueError("out must be C-contiguous rows of the levels read")
        grid = self.ticks(i, ticks)
        if grid is None:
            out[:] = np.nan
            return out
        from_ticks_cpu(grid[:, :levels], self.divisor, self.multiplier, out)
        return out

    def ticks(self, i: int, scratch: np.ndarray | None = None) -> np.ndarray | None:
        """Chunk ``i``'s int32 ticks, (rows, levels), its CRC-32C checked; None where the
        file is missing (every value the fill value). A compressed chunk is decompressed into
        ``scratch`` (int32, one whole chunk) when given; an uncompressed one is mapped from
        the file (read-only, no copy)."""
        n = min(self.chunk_rows, self.rows - i * self.chunk_rows)
        where = f"{self.where}/c/{i}/0"
        file = os.path.join(self.folder, "c", str(i), "0")
        if self.compressed:
            flat = read_chunk_file(file, where, self.store, None if scratch is None else scratch.view(np.uint8))
        else:
            flat = _mapped_chunk(file, where, self.store)
        if flat is None:
            return None
        if flat.size != self.chunk_rows * self.levels * 4:
            raise InputError(f"chunk {where} holds {flat.size // 4} values, not {self.chunk_rows * self.levels}",
                             store=self.store)
        return flat.view("<i4").reshape(self.chunk_rows, self.levels)[:n]


def _plain_layout(meta: dict, dims: list[str]) -> bool:
    """Whether an array's metadata is the plain layout the readers here decode: its values
    serialised as little-endian bytes (the codecs after that are the caller's to check),
    regular chunks with "/"-separated keys, its dimensions named ``dims``."""
    return (meta["codecs"][0].get("name") == "bytes"
            and meta["codecs"][0].get("configuration", {}).get("endian") == "little"
            and meta["chunk_grid"]["name"] == "regular"
            and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
            and meta.get("dimension_names") == dims)


def ticked_chunks(path: Any, group: str, name: str, attrs: dict) -> TickedChunks | None:
    """The array ``group/name`` of a local store as :class:`TickedChunks`, or None where
    its metadata is not the one this reader decodes (``attrs``: its attributes, holding
    the tick encoding)."""
    spec = spec_of(attrs)
    folder = Path(os.path.abspath(str(path))) / group / name  # absolute: tasks may run elsewhere
    try:
        meta = json.loads((folder / "zarr.json").read_text())
        codecs = [c.get("name") for c in meta["codecs"]]
        layout_ok = (codecs in _DIRECT_CODECS
                     and _plain_layout(meta, ["time", "level"])
                     and meta["data_type"] == "int32" and meta["fill_value"] == TICK_FILL)
        rows, levels = meta["shape"]
        chunk_rows, chunk_levels = meta["chunk_grid"]["configuration"]["chunk_shape"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if spec is None or not layout_ok or chunk_levels != levels or rows == 0:
        return None
    return TickedChunks(str(folder), str(path), f"{group}/{name}", int(rows), int(chunk_rows), int(levels),
                        spec[0], spec[1], "blosc" in codecs)


CHUNKS_ENCODING = "gpu_risk_ticked_chunks"  # a variable's encoding entry: its TickedChunks


def direct_variable(path: Any, group: str, name: str, attrs: dict, dims: tuple, write_id: Any
                    ) -> xr.Variable | None:
    """The ticked book array ``group/name`` (its stored attributes ``attrs``, dimensions
    ``dims``) as a Dask-backed variable whose tasks read its chunk files through
    :class:`TickedChunks` (its encoding keeps the source, for readers that read the chunks
    themselves); None where the reader does not apply."""
    import dask.base  # noqa: PLC0415

    source = ticked_chunks(path, group, name, dict(attrs))
    if source is None or tuple(dims) != ("time", "level"):
        return None
    stamp = (Path(source.folder) / "zarr.json").stat().st_mtime_ns
    token = "read-ticks-" + dask.base.tokenize(source.folder, write_id, stamp)
    sizes = source.chunk_sizes()
    graph = {(token, i, 0): (source.read, i) for i in range(len(sizes))}
    data = da.Array(graph, token, (sizes, (source.levels,)), dtype=np.float64, meta=np.empty((0, 0)))
    kept = {k: v for k, v in attrs.items() if k not in ("scale_factor", "_FillValue", TICKS_ATTR)}
    out = xr.Variable(dims, data, kept)
    out.encoding[CHUNKS_ENCODING] = source
    return out


_NS_UNITS = "nanoseconds since 1970-01-01"


def _read_vector(path: Any, group: str, name: str, dtypes: tuple[str, ...]) -> tuple[np.ndarray, dict] | None:
    """A one-dimensional array of one of ``dtypes`` (little-endian, Blosc or no compressor,
    then CRC-32C, regular chunks) read from its chunk files: (values, its attributes); None
    where its metadata is anything else."""
    folder = Path(os.path.abspath(str(path))) / group / name
    try:
        meta = json.loads((folder / "zarr.json").read_text())
        (rows,), (chunk_rows,) = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        names = [c.get("name") for c in meta["codecs"]]
        dtype = meta["data_type"]
        ok = (names in _DIRECT_CODECS and dtype in dtypes
              and _plain_layout(meta, [name])
              and isinstance(meta["fill_value"], int) and isinstance(meta.get("attributes", {}), dict))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok:
        return None
    item = np.dtype(dtype).newbyteorder("<")
    out = np.empty(rows, dtype=item)
    for i, start in enumerate(range(0, rows, chunk_rows)):
        n = min(chunk_rows, rows - start)
        where = f"{group}/{name}/c/{i}"
        file = str(folder / "c" / str(i))
        # a whole chunk is read (or decompressed) straight into its place in the result
        into = out[start:start + n].view(np.uint8) if n == chunk_rows else None
        flat = (read_chunk_file(file, where, str(path), into) if names[1] == "blosc"
                else _read_plain(file, where, str(path), into))
        if flat is None:  # a missing chunk reads as the fill value, as through zarr
            out[start:start + n] = meta["fill_value"]
            continue
        if flat.size != chunk_rows * item.itemsize:
            raise InputError(f"chunk {where} holds {flat.size // item.itemsize} values, not {chunk_rows}",
                             store=str(path))
        if into is None:
            out[start:start + n] = flat.view(item)[:n]
    return out.astype(np.dtype(dtype), copy=False), dict(meta.get("attributes", {}))


def read_time(path: Any, group: str) -> tuple[np.ndarray, dict] | None:
    """A day's ``time`` array (int64 ns since the epoch, CF-encoded as gpu_risk writes it)
    read from its chunk files: (datetime64[ns] values, the attributes xarray leaves on it);
    None where its metadata is anything else (xarray reads it then). xarray's own read of
    the time index costs about 20 ms a day, this one about 3."""
    found = _read_vector(path, group, "time", ("int64",))
    if found is None:
        return None
    values, attrs = found
    if (attrs.pop("units", None) != _NS_UNITS or attrs.pop("calendar", None) != "proleptic_gregorian"
            or {"_FillValue", "scale_factor", "add_offset", "dtype", "missing_value"} & set(attrs)):
        return None
    return values.view("datetime64[ns]"), attrs


BOOK_DAY_ARRAYS = ("bid_price", "ask_price", "bid_size", "ask_size", "level", "time")


def open_book_day(path: Any, group: str) -> xr.Dataset | None:
    """A book day group (its four ticked arrays, ``level`` and ``time``, nothing else) opened
    from its metadata files, as ``xr.open_zarr`` opens it (the tests compare the two) but
    without its per-array machinery (about 15 ms a day); its arrays read by this module.
    None for any other group."""
    root = Path(os.path.abspath(str(path))) / group
    try:
        meta = json.loads((root / "zarr.json").read_text())
        with os.scandir(root) as entries:
            children = sorted(e.name for e in entries if e.is_dir())
    except (OSError, ValueError):
        return None
    if meta.get("node_type") != "group" or children != sorted(BOOK_DAY_ARRAYS):
        return None
    attrs = meta.get("attributes", {})
    time, level = read_time(path, group), _level(path, group)
    if time is None or level is None or not isinstance(attrs, dict):
        return None
    variables = {}
    for name in BOOK_DAY_ARRAYS[:4]:
        try:
            array_attrs = json.loads((root / name / "zarr.json").read_text()).get("attributes", {})
        except (OSError, ValueError):
            return None
        var = direct_variable(path, group, name, array_attrs, ("time", "level"), attrs.get("gpu_risk_write_id"))
        if var is None or var.shape != (time[0].size, level[0].size):
            return None
        variables[name] = var
    time_var = xr.Variable("time", time[0], time[1], encoding={
        "units": _NS_UNITS, "calendar": "proleptic_gregorian", "dtype": np.dtype("int64")})
    # the time index over the values just read (pandas would copy them: 8 MB a day of 1 M snapshots)
    time_index = xr.indexes.PandasIndex(pd.DatetimeIndex(time[0], copy=False), "time")
    coords = xr.Coordinates({"time": time_var, "level": xr.Variable("level", level[0], level[1])},
                            indexes={"time": time_index})
    ds = xr.Dataset(variables, coords=coords, attrs=dict(attrs))
    ds = ds.set_xindex("level") if "level" not in ds.xindexes else ds
    ds.encoding["source"] = str(path)  # as xarray records the store it opened
    return ds


def _level(path: Any, group: str) -> tuple[np.ndarray, dict] | None:
    """A day's ``level`` coordinate (plain integers, no CF attributes), or None."""
    found = _read_vector(path, group, "level", ("int8", "int16", "int32", "int64"))
    if found is None or {"_FillValue", "scale_factor", "add_offset", "units", "dtype"} & set(found[1]):
        return None
    return found


def _checksum_error(where: str, store: str) -> InputError:
    return InputError(f"chunk {where} fails its checksum (damaged in place?); `gpu-risk verify` lists every "
                      "damaged chunk", store=store)


def _checked_file(file: str, where: str, store: str) -> bytes | None:
    """A chunk file's bytes (its CRC-32C at the end checked), or None where it is missing."""
    import google_crc32c  # noqa: PLC0415

    try:
        data = Path(file).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < 4 or google_crc32c.value(data) != _CRC32C_RESIDUE:
        raise _checksum_error(where, store)
    return data


def _read_plain(file: str, where: str, store: str, dest: np.ndarray | None = None) -> np.ndarray | None:
    """An uncompressed chunk file's bytes (without its CRC-32C, which is checked), read
    into ``dest`` (a flat uint8 buffer of the chunk's size) when given."""
    if dest is not None:
        try:
            handle = open(file, "rb", buffering=0)
        except FileNotFoundError:
            return None
        with handle:
            got = handle.readinto(dest.data)  # the array's own buffer
            stored = handle.read(5)
        if got != dest.nbytes or len(stored) != 4:
            raise InputError(f"chunk {where} does not hold one whole chunk", store=store)
        if crc32c(dest) != int.from_bytes(stored, "little"):
            raise _checksum_error(where, store)
        return dest
    data = _checked_file(file, where, store)
    return None if data is None else np.frombuffer(data, dtype=np.uint8)[:-4]


def _mapped_chunk(file: str, where: str, store: str) -> np.ndarray | None:
    """An uncompressed chunk file mapped into memory (its body, without the CRC-32C, which
    is checked): reading it costs one pass over the page cache, where reading it into a
    buffer costs a copy besides. gpu_risk never rewrites a chunk file in place (a day is
    written aside and renamed into place), so the mapping stays whole while it is read."""
    try:
        fd = os.open(file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size < 4:
            raise _checksum_error(where, store)
        mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED | _MAP_POPULATE)
    finally:
        os.close(fd)
    data = np.frombuffer(mapped, dtype=np.uint8)  # keeps the mapping until it is dropped
    if crc32c(data) != _CRC32C_RESIDUE:
        raise _checksum_error(where, store)
    return data[:-4]


_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: the pages mapped at once, not one fault at a time


def _crc32c_function():
    """google-crc32c's C function over a raw buffer (its Python call takes only ``bytes``,
    which would cost a copy of every chunk), or None where its library is not found."""
    import ctypes  # noqa: PLC0415

    import google_crc32c  # noqa: PLC0415

    here = Path(google_crc32c.__file__).resolve().parent
    for lib in sorted([*here.parent.glob("google_crc32c.libs/libcrc32c*"), *here.glob(".dylibs/libcrc32c*"),
                       *here.glob("libcrc32c*")]):
        try:
            found = ctypes.CDLL(str(lib))
            function = found.crc32c_value
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_uint32
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return function
    return None


_crc32c_c: Any = None


def crc32c(data: np.ndarray) -> int:
    """The CRC-32C of a contiguous uint8 array, without copying it (where google-crc32c's
    library is found; else through ``bytes``)."""
    global _crc32c_c
    if _crc32c_c is None:
        _crc32c_c = _crc32c_function() or False
    if _crc32c_c is False:
        import google_crc32c  # noqa: PLC0415

        return int(google_crc32c.value(data.tobytes()))
    return int(_crc32c_c(data.ctypes.data, data.nbytes))
