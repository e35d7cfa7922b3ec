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

    code = "import sys, gpu_risk.workflow, gpu_risk.summary; print('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
