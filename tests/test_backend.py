import numpy as np
import pytest

from gpu_risk.backend import choose_backend, dispatch, gpu_available, is_cupy


def test_cpu_backend_is_always_available():
    assert choose_backend("cpu")[0] == "cpu"


def test_auto_says_what_it_chose_and_why():
    backend, why = choose_backend("auto")
    ok, reason = gpu_available()
    assert backend == ("gpu" if ok else "cpu")
    assert reason in why


def test_gpu_without_device_is_a_clear_error():
    if gpu_available()[0]:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="--backend gpu asked for"):
        choose_backend("gpu")


def test_bad_backend_name():
    with pytest.raises(ValueError, match="auto, cpu or gpu"):
        choose_backend("tpu")


def test_dispatch_follows_the_chunk_type():
    import dask.array as da

    calls = []
    run = dispatch(lambda x: calls.append("cpu"), lambda x: calls.append("gpu"))
    run(np.zeros(3))
    assert not is_cupy(da.zeros(3)) and calls == ["cpu"]


def test_importing_the_package_does_not_import_cupy():
    import subprocess
    import sys

    # records which module asks for cupy: a dependency may import it where it is installed
    # (the GPU image's zarr does); gpu_risk itself must not, until a GPU is asked for
    code = """
import builtins, sys
callers = []
real = builtins.__import__
def spy(name, globals=None, *args, **kwargs):
    if name.split(".")[0] == "cupy":
        callers.append((globals or {}).get("__name__", "?"))
    return real(name, globals, *args, **kwargs)
builtins.__import__ = spy
import gpu_risk, gpu_risk.workflow, gpu_risk.summary, gpu_risk.cli
print(sorted({c for c in callers if c.split(".")[0] == "gpu_risk"}))
"""
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
