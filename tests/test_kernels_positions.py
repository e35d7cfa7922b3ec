"""Open-interest kernel against a plain-Python loop reference, on every backend."""

import numpy as np
import pytest
from gpu_risk.kernels.positions import open_interest_cpu
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays


def reference_open_interest(position, unit_notional, exclude):
    long = [0.0] * position.shape[1]
    short = [0.0] * position.shape[1]
    for a in range(position.shape[0]):
        if exclude[a]:
            continue
        for i in range(position.shape[1]):
            q = float(position[a, i])
            if q > 0:
                long[i] += q * unit_notional[i]
            elif q < 0:
                short[i] += -q * unit_notional[i]
    return np.array([long, short])


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@given(position=arrays(np.float64, st.tuples(st.integers(0, 40), st.integers(1, 6)), elements=finite),
       data=st.data())
def test_open_interest_matches_reference(position, data):
    n_acc, n_inst = position.shape
    unit = np.array(data.draw(st.lists(st.floats(0.01, 1e5), min_size=n_inst, max_size=n_inst)))
    exclude = np.array(data.draw(st.lists(st.booleans(), min_size=n_acc, max_size=n_acc)), dtype=bool)
    out = np.empty((2, n_inst))
    open_interest_cpu(position, unit, exclude, out)
    np.testing.assert_allclose(out, reference_open_interest(position, unit, exclude), rtol=1e-12, atol=1e-9)


def test_open_interest_gpu_matches_cpu(cupy_or_skip):
    cp = cupy_or_skip
    from gpu_risk.kernels.positions import open_interest_gpu

    rng = np.random.default_rng(0)
    position = rng.normal(size=(1000, 8))
    unit = rng.uniform(1, 100, 8)
    exclude = rng.random(1000) < 0.1
    cpu = open_interest_cpu(position, unit, exclude, np.empty((2, 8)))
    gpu = open_interest_gpu(cp.asarray(position), cp.asarray(unit), cp.asarray(exclude), cp.empty((2, 8)))
    np.testing.assert_allclose(cp.asnumpy(gpu), cpu, rtol=1e-9)


@pytest.fixture
def cupy_or_skip():
    from gpu_risk.backend import gpu_available

    ok, why = gpu_available()
    if not ok:
        pytest.skip(why)
    import cupy

    return cupy
