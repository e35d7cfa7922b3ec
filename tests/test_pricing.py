"""Black-76 against textbook values and put-call parity."""

import math

import numpy as np
import pytest
from gpu_risk.kernels.pricing import black76


def test_at_the_money_closed_form():
    # F = K: call = F (2 N(s sqrt(T)/2) - 1); s = 0.2, T = 1 -> 100 (2 N(0.1) - 1)
    expected = 100 * math.erf(0.1 / math.sqrt(2))
    assert black76(100.0, 100.0, 1.0, 0.2, True) == pytest.approx(expected, rel=1e-13)
    assert expected == pytest.approx(7.965567455405804, rel=1e-12)


def test_matches_formula_with_independent_cdf():
    # the formula evaluated with an independent normal CDF (math.erf)
    F, K, T, s = 620.0, 600.0, 0.5, 0.25
    d1 = (math.log(F / K) + 0.5 * s * s * T) / (s * math.sqrt(T))
    d2 = d1 - s * math.sqrt(T)
    N = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    assert black76(F, K, T, s, True) == pytest.approx(F * N(d1) - K * N(d2), rel=1e-13)
    assert black76(F, K, T, s, False) == pytest.approx(K * N(-d2) - F * N(-d1), rel=1e-13)


def test_put_call_parity_and_expiry():
    rng = np.random.default_rng(1)
    F, K = rng.uniform(10, 1000, 200), rng.uniform(10, 1000, 200)
    T, s = rng.uniform(0.01, 2, 200), rng.uniform(0.05, 2, 200)
    np.testing.assert_allclose(black76(F, K, T, s, True) - black76(F, K, T, s, False), F - K,
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(black76(F, K, 0.0, s, True), np.maximum(F - K, 0))
