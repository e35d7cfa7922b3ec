"""Run the CUDA kernels' source on the host, so that machines without a GPU test it.

Each ``CUDA_SOURCE`` is compiled as C++ (g++) behind a small shim for the CUDA built-ins
(``__global__``, ``blockIdx``/``threadIdx``, ``CUDART_NAN``, ...), with one generated
launcher per ``extern "C" __global__`` kernel that runs every thread of the grid in turn.
``cuda_on_host()`` then stands in for CuPy inside the kernel wrappers (``*_gpu`` in
``kernels/``): NumPy arrays play the device arrays, ``RawModule`` compiles as above. The
wrappers and the CUDA code run exactly as they would on a device, except for what only a
device shows (threads racing, memory limits, the device's libm). Floating point matches a
GPU compiled with ``--fmad=false``: x86-64 without ``-march`` has no fused multiply-add,
and ``-ffp-contract=off`` keeps it that way.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SHIM = r"""
#include <math.h>
#include <cmath>
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define CUDART_INF (INFINITY)
#define CUDART_NAN (NAN)
using std::isnan;
struct host_dim3 { unsigned int x; };
static host_dim3 blockIdx, threadIdx, blockDim;
"""
KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_BUILD = Path(tempfile.gettempdir()) / "gpu_risk_cuda_host"


def compiler() -> str | None:
    return shutil.which("g++")


def _parameters(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        part = " ".join(part.split())
        name = re.findall(r"\w+$", part)[0]
        out.append((part[: -len(name)].strip(), name))
    return out


def _ctype(kind: str):
    if "*" in kind:
        return ctypes.c_void_p
    kind = kind.replace("const", "").strip()
    return {"double": ctypes.c_double, "int": ctypes.c_int, "long long": ctypes.c_longlong,
            "bool": ctypes.c_bool}[kind]


class HostFunction:
    def __init__(self, lib, name: str, params: list[tuple[str, str]]):
        self.fn = getattr(lib, f"launch_{name}")
        self.types = [_ctype(kind) for kind, _ in params]
        self.fn.argtypes = [ctypes.c_longlong, ctypes.c_int] + self.types
        self.fn.restype = None
        self.name = name

    def __call__(self, grid, block, args):
        if len(args) != len(self.types):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.types)} parameters")
        values = []
        for arg, kind in zip(args, self.types):
            if kind is ctypes.c_void_p:
                if not (isinstance(arg, np.ndarray) and arg.flags.c_contiguous):
                    raise TypeError(f"{self.name}: a pointer argument must be a C-contiguous array")
                values.append(arg.ctypes.data)
            else:
                values.append(kind(arg.item() if isinstance(arg, np.generic) else arg))
        self.fn(int(grid[0]), int(block[0]), *values)


class HostModule:
    """``cupy.RawModule`` on the host: the source compiled as C++."""

    def __init__(self, code: str, options=(), **_):
        code = code.replace("#include <math_constants.h>", "")
        uncommented = re.sub(r"//[^\n]*", "", code)
        kernels = [(m.group(1), _parameters(m.group(2))) for m in KERNEL.finditer(uncommented)]
        launchers = []
        for name, params in kernels:
            decl = ", ".join(f"{kind} {arg}" for kind, arg in params)
            call = ", ".join(arg for _, arg in params)
            launchers.append(
                f'extern "C" void launch_{name}(long long grid, int block, {decl}) {{\n'
                f"    blockDim.x = block;\n"
                f"    for (long long b = 0; b < grid; ++b) for (int t = 0; t < block; ++t) {{\n"
                f"        blockIdx.x = (unsigned int)b; threadIdx.x = t; {name}({call});\n    }}\n}}\n")
        source = SHIM + code + "\n" + "\n".join(launchers)
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        _BUILD.mkdir(exist_ok=True)
        lib = _BUILD / f"kernels_{digest}.so"
        if not lib.exists():
            src = _BUILD / f"kernels_{digest}.cpp"
            src.write_text(source)
            tmp = lib.with_suffix(".so.tmp")
            done = subprocess.run([compiler(), "-O2", "-ffp-contract=off", "-shared", "-fPIC", str(src),
                                   "-o", str(tmp)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
            tmp.replace(lib)
        self.lib = ctypes.CDLL(str(lib))
        self.functions = {name: HostFunction(self.lib, name, params) for name, params in kernels}

    def get_function(self, name: str) -> HostFunction:
        return self.functions[name]


class HostArray(np.ndarray):
    """A NumPy array with CuPy's ``get()``."""

    def get(self):
        return np.asarray(self)


class HostCupy:
    """Enough of CuPy for the kernel wrappers, on NumPy."""

    RawModule = HostModule
    float64, int64, int32, uint8, bool_ = np.float64, np.int64, np.int32, np.uint8, np.bool_

    def __getattr__(self, name):
        attr = getattr(np, name)
        if not callable(attr):
            return attr

        def wrapped(*args, **kwargs):
            out = attr(*args, **kwargs)
            return out.view(HostArray) if isinstance(out, np.ndarray) else out

        return wrapped


@contextlib.contextmanager
def cuda_on_host(monkeypatch):
    """Within: the ``*_gpu`` kernel wrappers run their CUDA source on the host."""
    from gpu_risk.kernels import _compile, cascade, contagion, imbalance, liquidation, stress

    fake = HostCupy()
    for module in (_compile, cascade, contagion, imbalance, liquidation, stress):
        if hasattr(module, "cupy_module"):
            monkeypatch.setattr(module, "cupy_module", lambda: fake)
    monkeypatch.setattr(_compile, "_CUDA_MODULES", {})  # modules compiled for the host, not a device
    yield fake
