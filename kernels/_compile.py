"""One place that compiles kernels: numba for the CPU, CuPy (imported lazily) for the GPU.

CPU kernels are single-threaded ``nogil`` loops: Dask runs one per chunk in its thread or
process pool, so the machine's cores are used by Dask and never by a second, nested
thread pool inside numba (which oversubscribes or crashes inside Dask workers).
"""

from __future__ import annotations

import os
from pathlib import Path

import numba

cpu_kernel = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
# small helpers called in the innermost loops: inlined into their callers at numba's IR
# level (a numba-to-numba call passes every array as a struct of ~7 fields, which costs
# more than the arithmetic of a position's terms)
cpu_inline = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy", inline="always")


def cpu_cache_warm() -> bool:
    """Whether numba's on-disk cache holds compiled kernels of this package (otherwise the
    first call of each compiles it: tens of seconds in all, once per machine)."""
    here = Path(__file__).resolve().parent
    places = [here / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        places.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    return any(next(place.rglob("*.nbi"), None) is not None for place in places if place.is_dir())


def cupy_module():
    """Import CuPy on first use, so that importing gpu_risk never imports it."""
    import cupy  # noqa: PLC0415

    return cupy


_CUDA_MODULES: dict = {}


def cuda_module(code: str, options: tuple[str, ...] = ()):
    """The CUDA source ``code`` compiled for the current device, once per device and
    source (NVRTC through ``cupy.RawModule``; CuPy also caches the binary on disk)."""
    cp = cupy_module()
    cuda = getattr(cp, "cuda", None)
    device = cuda.Device().id if cuda is not None else -1
    key = (device, code, tuple(options))
    module = _CUDA_MODULES.get(key)
    if module is None:
        module = _CUDA_MODULES[key] = cp.RawModule(code="#include <math_constants.h>\n" + code,
                                                   options=tuple(options))
    return module
