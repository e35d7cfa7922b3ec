"""Every CUDA source compiles with nvcc, GPU or not (where nvcc exists)."""

import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import pytest
from gpu_risk.kernels import cascade, contagion, imbalance, liquidation, stress


def nvcc():
    found = shutil.which("nvcc") or next((str(p) for p in Path("/usr/local").glob("cuda*/bin/nvcc")), None)
    if found is None:
        pytest.skip("nvcc not found")
    return found


@pytest.mark.parametrize("module,kernels", [(imbalance, ["imbalance_ofi", "imbalance_state"]),
                                            (liquidation, ["liquidation_gpu"]),
                                            (cascade, ["cascade_gpu"]),
                                            (types.SimpleNamespace(
                                                CUDA_SOURCE=liquidation.CUDA_SOURCE + stress.STRESS_CUDA_SOURCE,
                                                CUDA_OPTIONS=liquidation.CUDA_OPTIONS), ["stress_gpu"]),
                                            (types.SimpleNamespace(
                                                CUDA_SOURCE=liquidation.CUDA_SOURCE + contagion.CONTAGION_CUDA_SOURCE,
                                                CUDA_OPTIONS=liquidation.CUDA_OPTIONS),
                                             ["contagion_start", "contagion_open", "contagion_evaluate",
                                              "contagion_books", "contagion_positions", "contagion_debts",
                                              "contagion_follow", "contagion_finish"])],
                         ids=["imbalance", "liquidation", "cascade", "stress", "contagion"])
def test_cuda_source_compiles(module, kernels):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.cu"
        src.write_text("#include <math_constants.h>\n" + module.CUDA_SOURCE)
        ptx = Path(tmp) / "kernel.ptx"
        result = subprocess.run([nvcc(), "--ptx", "-arch=sm_80", *module.CUDA_OPTIONS, str(src), "-o", str(ptx)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        text = ptx.read_text()
        for name in kernels:
            assert f".entry {name}" in text
