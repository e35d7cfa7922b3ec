"""Backend choice (numba CPU or CuPy GPU) and dispatch of kernels on the chunk type.

``--backend`` only decides where data is loaded (NumPy or CuPy chunks); the kernel that
runs on a chunk is picked from the chunk's type (``dask_array._meta``), so a graph built
once runs on either backend. CuPy is imported only when a GPU is asked for or seen.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import xarray as xr

log = logging.getLogger(__name__)
Backend = Literal["auto", "cpu", "gpu"]


@functools.cache
def gpu_available() -> tuple[bool, str]:
    """(available, reason): whether CuPy imports and sees at least one CUDA device."""
    try:
        import cupy  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name == "cupy":  # the usual case on a CPU machine: no noise about it
            return False, "CuPy is not installed"
        return False, f"CuPy not importable ({type(exc).__name__}: {exc})"
    except Exception as exc:  # a CUDA library failing to load
        return False, f"CuPy not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no CUDA device visible ({exc})"
    if n < 1:
        return False, "no CUDA device visible"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    return True, f"{n} CUDA device(s), {name}"


def choose_backend(requested: Backend = "auto") -> tuple[str, str]:
    """Resolve ``auto|cpu|gpu`` to ``cpu`` or ``gpu`` and say why."""
    if requested not in ("auto", "cpu", "gpu"):
        raise ValueError(f"backend must be auto, cpu or gpu, not {requested!r}")
    if requested == "cpu":
        return "cpu", "numba CPU kernels (asked for)"
    ok, why = gpu_available()
    if requested == "gpu":
        if not ok:
            raise RuntimeError(f"--backend gpu asked for, but {why}")
        return "gpu", f"CuPy GPU kernels on {why}"
    if ok:
        return "gpu", f"CuPy GPU kernels: auto found {why}"
    return "cpu", f"numba CPU kernels: auto found {why}"


def is_cupy(array: Any) -> bool:
    """Whether an array, or a Dask array's chunks (its ``_meta``), live on the GPU."""
    meta = getattr(array, "_meta", array)
    return type(meta).__module__.split(".")[0] == "cupy"


def to_host(value) -> np.ndarray:
    """A computed array as a NumPy array, wherever it was computed (CuPy: copied back)."""
    return value.get() if is_cupy(value) else np.asarray(value)


def on_host(x: xr.DataArray) -> xr.DataArray:
    """The same DataArray with its data (or, lazily, its Dask chunks) on the host: for small
    results such as per-account flags that are combined with host-side variables."""
    if not is_cupy(x.data):
        return x
    if hasattr(x.data, "map_blocks"):
        return x.copy(data=x.data.map_blocks(to_host, dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype)))
    return x.copy(data=to_host(x.data))


def dispatch(cpu_kernel: Callable, gpu_kernel: Callable) -> Callable:
    """A function that runs ``gpu_kernel`` on CuPy arrays and ``cpu_kernel`` otherwise."""

    from .timing import timed_kernel  # noqa: PLC0415

    name = getattr(cpu_kernel, "__name__", "kernel").removesuffix("_cpu")
    timed_cpu, timed_gpu = timed_kernel(name, cpu_kernel), timed_kernel(f"{name}[gpu]", gpu_kernel)

    def run(first, *args, **kwargs):
        return (timed_gpu if is_cupy(first) else timed_cpu)(first, *args, **kwargs)

    run.__name__ = name
    return run


def empty_like_backend(template: Any, shape, dtype=np.float64):
    """An uninitialised array on the same backend as ``template``."""
    if is_cupy(template):
        import cupy  # noqa: PLC0415

        return cupy.empty(shape, dtype=dtype)
    return np.empty(shape, dtype=dtype)


def asarray_like(template: Any, x, dtype=None):
    """``x`` as an array on the same backend as ``template`` (copied over only if it is not)."""
    if is_cupy(template):
        import cupy  # noqa: PLC0415

        return cupy.asarray(x, dtype=dtype)
    return np.asarray(to_host(x), dtype=dtype)


def to_backend(ds: xr.Dataset, backend: str) -> xr.Dataset:
    """Move a Dask-backed dataset's float and bool chunks to the GPU (``gpu``) or leave
    them on the host (``cpu``); lazily."""
    if backend == "cpu":
        return ds
    import cupy  # noqa: PLC0415

    out = ds.copy()
    for name, var in ds.data_vars.items():
        if var.chunks is not None and var.dtype.kind in "fb":
            out[name] = var.copy(data=var.data.map_blocks(cupy.asarray, dtype=var.dtype,
                                                          meta=cupy.empty((0,) * var.ndim, var.dtype)))
    return out


def in_memory_dask(array, rows: int | None = None):
    """A Dask array over an in-memory (NumPy or CuPy) array, cut along its first axis into
    pieces of ``rows`` (one piece by default), without copying or hashing it:
    ``dask.array.from_array`` copies the whole array and hashes it with SHA-1, which on a
    book in memory cost more than the kernels. The pieces are views; the name is random."""
    import dask.array as da  # noqa: PLC0415

    n = array.shape[0]
    rows = n if not rows or rows >= n else int(rows)
    starts = list(range(0, n, rows)) or [0]
    name = f"in-memory-{uuid.uuid4().hex}"
    rest = (0,) * (array.ndim - 1)
    dsk = {(name, i, *rest): array[s:s + rows] for i, s in enumerate(starts)}
    chunks = (tuple(min(rows, n - s) for s in starts) if n else (0,),) + tuple((d,) for d in array.shape[1:])
    return da.Array(dsk, name, chunks, meta=array[:0], dtype=array.dtype)
