"""The CUDA kernels, run on the host (tests/cuda_host.py), against the numba kernels.

No GPU is needed: the CUDA source of each family and its Python wrapper run here, on the
same inputs as the CPU kernel, and must agree to 1e-9 (SPEC's CPU/GPU tolerance). Where a
device exists, the GPU tests (marked ``cupy``) run the same comparisons on it.
"""

import numpy as np
import pytest
from cuda_host import compiler, cuda_on_host

from gpu_risk import store
from gpu_risk.liquidation import FACTOR_RANGE, SHOCK_RANGE, market_arrays
from gpu_risk.model import in_market_order

pytestmark = pytest.mark.skipif(compiler() is None,
                                reason="no C++ compiler (g++) to build the CUDA source for the host")


def day_inputs(tiny_dataset):
    day = tiny_dataset["days"][0]
    market = store.open_market(tiny_dataset["market"], day)
    pos = in_market_order(store.open_positions(tiny_dataset["positions"], day, market=market), market).compute()
    f64 = lambda name: np.ascontiguousarray(pos[name].values, np.float64)  # noqa: E731
    accounts = (f64("balance"), f64("position"), f64("entry_price"), f64("isolated_margin"),
                np.ascontiguousarray(pos["margin_mode"].values == "isolated"))
    return accounts, market_arrays(market)


def test_liquidation_kernel(tiny_dataset, monkeypatch):
    from gpu_risk.kernels.liquidation import FIXED_COLUMNS, liquidation_cpu, liquidation_gpu

    accounts, m = day_inputs(tiny_dataset)
    cpu = np.empty((accounts[0].shape[0], accounts[1].shape[1] + FIXED_COLUMNS))
    liquidation_cpu(*accounts, m, *FACTOR_RANGE, *SHOCK_RANGE, cpu)
    with cuda_on_host(monkeypatch):
        gpu = np.empty_like(cpu)
        liquidation_gpu(*accounts, m, *FACTOR_RANGE, *SHOCK_RANGE, gpu)
    assert np.isfinite(cpu).sum() > cpu.shape[0]  # liquidation prices and shocks were found
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
    np.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("second_is_vol", [True, False], ids=["vol", "haircut"])
def test_stress_kernel(tiny_dataset, monkeypatch, second_is_vol):
    from gpu_risk.kernels.stress import stress_cpu, stress_gpu

    accounts, m = day_inputs(tiny_dataset)
    n = accounts[0].shape[0]
    exclude = np.zeros(n, bool)
    exclude[::97] = True
    shocks = np.array([-0.5, -0.2, -0.05, 0.0, 0.1, 0.4])
    second = np.array([-0.1, 0.0, 0.2]) if second_is_vol else np.array([0.0, 0.3])
    totals = np.zeros((shocks.size, second.size, 2))
    worst = np.empty(n)
    surface = np.empty((n, shocks.size, second.size))
    stress_cpu(*accounts, exclude, m, shocks, second, second_is_vol, surface, totals, worst)
    with cuda_on_host(monkeypatch):
        # the same contract: outputs given, totals added to
        g_totals, g_worst, g_surface = np.zeros_like(totals), np.empty_like(worst), np.empty_like(surface)
        stress_gpu(*accounts, exclude, m, shocks, second, second_is_vol, g_surface, g_totals, g_worst)
    np.testing.assert_allclose(g_surface, surface, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_worst, worst, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(g_totals[..., 0], totals[..., 0])
    np.testing.assert_allclose(g_totals[..., 1], totals[..., 1], rtol=1e-9)
    assert totals[..., 0].max() > 0 and totals[..., 1].max() > 0


def test_cascade_kernel(monkeypatch):
    from gpu_risk.kernels.cascade import cascade_gpu
    from test_cascade import SHOCKS, random_case, run_kernel

    from gpu_risk.cascade import position_tables

    rng = np.random.default_rng(11)
    for extrapolation, exponent in ((None, None), (0.25, None), (None, 1.3)):
        for _ in range(40):
            books, quantity, lp = random_case(rng)
            cpu = run_kernel(books, quantity, lp, SHOCKS, "cpu", extrapolation, exponent)
            with cuda_on_host(monkeypatch):
                long_t, short_t = position_tables(quantity, lp, np.abs(quantity) * lp)
                out = np.empty_like(cpu)
                cascade_gpu(*(books[k] for k in ("bid_price", "bid_size", "ask_price", "ask_size")), SHOCKS,
                            long_t[0, :-1], long_t[1], long_t[2], short_t[0, :-1], short_t[1], short_t[2],
                            np.nan if extrapolation is None else extrapolation,
                            np.nan if exponent is None else exponent, out)
            np.testing.assert_array_equal(out, cpu)


def test_imbalance_kernel(monkeypatch):
    from gpu_risk.kernels.imbalance import imbalance_block_cpu, imbalance_block_gpu, n_columns

    rng = np.random.default_rng(5)
    n, levels = 400, 5
    mid = 2000 + np.cumsum(rng.integers(-2, 3, size=n))
    bid = ((mid[:, None] - 1 - 2 * np.arange(levels)) * 0.5).astype(float)
    ask = ((mid[:, None] + 1 + 2 * np.arange(levels)) * 0.5).astype(float)
    bid_size = rng.uniform(0, 5, size=(n, levels)).round(2)
    ask_size = rng.uniform(0, 5, size=(n, levels)).round(2)
    empty = rng.random(n) < 0.1  # the deepest level empty now and then
    bid[empty, -1], bid_size[empty, -1] = np.nan, 0.0
    ask[empty, -1], ask_size[empty, -1] = np.nan, 0.0
    bucket = np.sort(rng.integers(0, 150, size=n))
    bucket -= bucket[0]
    bands = np.array([5.0, 10.0, 50.0])
    prev = [bid[0] - 0.5, ask[0] + 0.5, bid_size[0], ask_size[0]]
    for has_prev in (False, True):
        n_out = int(bucket[-1]) + 1
        cpu = np.empty((n_out, n_columns(levels, bands.size)))
        imbalance_block_cpu(bid, ask, bid_size, ask_size, *prev, has_prev, bucket, bands, cpu)
        with cuda_on_host(monkeypatch):
            gpu = np.empty_like(cpu)
            imbalance_block_gpu(bid, ask, bid_size, ask_size, *prev, has_prev, bucket, bands, gpu)
        np.testing.assert_allclose(gpu, cpu, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert (cpu[:, -1] == 0).any()  # empty buckets carried forward


def test_contagion_kernel(monkeypatch):
    """The CUDA contagion (a few launches per round) against the numba kernel through the
    public function, on the contagion tests' random portfolios: thin books that run out,
    cross and isolated accounts, duplicated accounts (ties), no depth model, the flat one
    and the power one."""
    import xarray as xr
    from gpu_risk.kernels import contagion as kernels
    from test_contagion import SHOCKS, depth_market, make_accounts, make_books

    from gpu_risk import contagion as api

    rng = np.random.default_rng(23)
    cases = []
    for thin, setting, single in ((0.3, None, False), (1.0, None, False), (5.0, None, False),
                                  (0.3, 0.002, False), (0.3, "power", False), (0.3, 0.002, True), (1.0, None, True)):
        market = depth_market(("power", 1.3) if setting == "power" else ("flat", setting))
        # single: mostly accounts that follow one mark (the CPU kernel's sorted tables, the
        # device's direct evaluation)
        positions = make_accounts(rng, market, n=200 if single else 30, single=single, stable_only=single)
        twice = positions.isel(account=[0, 1, 2]).assign_coords(account=[100, 101, 102])
        cases.append((make_books(rng, thin=thin), xr.concat([positions, twice], "account"), market, setting))

    def run_all():
        return [api(book, positions, market, book["BTCUSDT"].time.values, SHOCKS, depth_extrapolation=setting)
                for book, positions, market, setting in cases]

    expected = run_all()
    with cuda_on_host(monkeypatch) as fake:
        def on_device(*args):  # the CPU kernel's place, the device kernel's work
            block, lost = fake.empty(args[-2].shape), fake.empty(args[-1].shape)
            kernels.contagion_gpu(*args[:-2], block, lost)
            args[-2][...], args[-1][...] = block, lost
        monkeypatch.setattr(kernels, "contagion_cpu", on_device)
        got = run_all()
    for ours, theirs in zip(got, expected):
        for name in ("final_price", "accounts_liquidated", "rounds", "book_exhausted"):
            np.testing.assert_array_equal(ours[name].values, theirs[name].values, err_msg=name)
        for name in ("liquidated_notional", "shortfall"):
            np.testing.assert_allclose(ours[name].values, theirs[name].values, rtol=1e-12, atol=1e-9, err_msg=name)
    assert sum(int(e.book_exhausted.sum()) for e in expected) > 0 and max(int(e.rounds.max()) for e in expected) >= 2
    assert max(float(e.shortfall.max()) for e in expected) > 0
