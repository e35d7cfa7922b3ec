"""Liquidation thresholds (SPEC section 2): venue worked examples, and random accounts
checked with an independent evaluator (tests/liquidation_reference.py)."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from liquidation_reference import collateral_ratio, gross, margin_parts, price_scenario, shock_scenario

from gpu_risk.errors import InputError
from gpu_risk.liquidation import liquidation, market_arrays
from gpu_risk.store import market_from_dict

USDT = {"price": 1.0, "haircut": 0.0, "beta": 0.0}
BINANCE_BTC = [[0, 0.004, 0], [50_000, 0.005, 50], [250_000, 0.01, 1_300], [1_000_000, 0.025, 16_300],
               [10_000_000, 0.05, 266_300]]


def market(assets, instruments):
    return market_from_dict({"assets": assets, "instruments": instruments, "date": "2026-01-05"})


def positions(balance, position, entry, assets, instruments, mode="cross", iso=None):
    n = len(balance)
    return xr.Dataset(
        {"balance": (("account", "asset"), np.array(balance, float)),
         "position": (("account", "instrument"), np.array(position, float)),
         "entry_price": (("account", "instrument"), np.array(entry, float)),
         "margin_mode": ("account", np.array([mode] * n, dtype=object)),
         "isolated_margin": (("account", "instrument"),
                             np.array(iso if iso is not None else np.zeros_like(position), float))},
        coords={"account": np.arange(n), "asset": assets, "instrument": instruments})


def btc_market(brackets, price=50_000.0):
    return market({"USDT": USDT, "BTC": {"price": price, "haircut": 0.0}},
                  {"BTCUSDT": {"kind": "linear", "underlying": "BTC", "mark_price": price, "brackets": brackets}})


def test_gpu_matches_cpu_on_synthetic_accounts(backend, tiny_dataset):
    """CPU and GPU kernels agree to 1e-9 on every output (skipped without a GPU)."""
    if backend == "cpu":
        pytest.skip("compares the GPU with the CPU")
    from gpu_risk import store

    m = store.open_market(tiny_dataset["market"], tiny_dataset["days"][0])
    p = store.open_positions(tiny_dataset["positions"], tiny_dataset["days"][0], market=m).chunk({"account": 500})
    cpu = liquidation(p, m).compute()
    gpu = run_liquidation(p, m, "gpu")
    for name in ("collateral_ratio", "liquidation_price", "liquidation_shock_down", "liquidation_shock_up"):
        np.testing.assert_allclose(gpu[name].values, cpu[name].values, rtol=1e-9, equal_nan=True, err_msg=name)


def test_binance_isolated_examples():
    """Binance USD-M liquidation-price examples ("How to Calculate Liquidation Price of
    USD-M Futures Contracts", Binance Support FAQ): isolated, one-way mode,
    LP = (WB + cum - side Q EP) / (Q MMR - side Q)."""
    m = btc_market(BINANCE_BTC)
    p = positions([[0, 0]] * 3, [[0.1], [-0.1], [100.0]], [[50_000]] * 3, ["USDT", "BTC"], ["BTCUSDT"],
                  mode="isolated", iso=[[1_000], [1_000], [500_000]])
    lp = liquidation(p, m).liquidation_price.values[:, 0]
    np.testing.assert_allclose(lp, [40_160.6426, 59_760.9562, 45_986.667], rtol=1e-6)


def test_hyperliquid_and_dydx_rules():
    """Hyperliquid docs ("Liquidations"): isolated margin 5,000, long 1 BTC @ 50,000,
    maintenance 1.25 % -> 45,569.62. dYdX v4 docs (margin, cross): 10,000 USDC, long 2 BTC
    @ 50,000, maintenance fraction 3 % -> 46,391.75."""
    hl = positions([[0, 0]], [[1.0]], [[50_000]], ["USDT", "BTC"], ["BTCUSDT"], mode="isolated", iso=[[5_000]])
    lp = liquidation(hl, btc_market([[0, 0.0125, 0]])).liquidation_price.values[0, 0]
    np.testing.assert_allclose(lp, 45_569.62, rtol=1e-6)
    dydx = positions([[10_000, 0]], [[2.0]], [[50_000]], ["USDT", "BTC"], ["BTCUSDT"])
    lp = liquidation(dydx, btc_market([[0, 0.03, 0]])).liquidation_price.values[0, 0]
    np.testing.assert_allclose(lp, 46_391.75, rtol=1e-6)


def test_aave_health_factor():
    """Aave V3 (docs, "Health factor"): 10 WETH @ 2,000, liquidation threshold 83 %, debt
    15,000 USDC: HF = 10 x 2,000 x 0.83 / 15,000 = 1.106667; liquidation at 1,807.23.
    Haircut = 1 - liquidation threshold."""
    m = market({"USDC": {"price": 1.0, "haircut": 0.0, "beta": 0.0},
                "WETH": {"price": 2_000.0, "haircut": 0.17, "beta": 1.0}},
               {"WETHUSDC": {"kind": "linear", "underlying": "WETH", "mark_price": 2_000.0,
                             "brackets": [[0, 0.01, 0]]}})
    p = positions([[-15_000, 10]], [[0.0]], [[np.nan]], ["USDC", "WETH"], ["WETHUSDC"])
    r = liquidation(p, m)
    np.testing.assert_allclose(r.collateral_ratio.values[0], 1.106667, rtol=1e-6)
    np.testing.assert_allclose(r.liquidation_price.values[0, 0], 1_807.23, rtol=1e-6)
    np.testing.assert_allclose(r.liquidation_shock_down.values[0], 1_807.2289156626507 / 2_000 - 1, rtol=1e-9)


def test_root_in_another_bracket():
    """Long 30 BTC @ 50,000 (1.5M notional, the 2.5 % / 16,300 bracket) with 600,000 USDT:
    C = R is reached where the notional is below 1M, in the 1 % / 1,300 bracket:
    600,000 + 30 (p - 50,000) = 30 p 0.01 - 1,300 -> p = 898,700 / 29.7 = 30,259.26."""
    m = btc_market(BINANCE_BTC)
    p = positions([[600_000, 0]], [[30.0]], [[50_000]], ["USDT", "BTC"], ["BTCUSDT"])
    lp = liquidation(p, m).liquidation_price.values[0, 0]
    np.testing.assert_allclose(lp, 898_700 / 29.7, rtol=1e-12)
    assert 250_000 <= 30 * lp < 1_000_000  # the bracket changed
    # the closed form of the current bracket would be wrong (and outside that bracket):
    wrong = (600_000 + 16_300 - 30 * 50_000) / (30 * 0.025 - 30)
    assert abs(wrong - lp) > 40  # 30,211.97: the rate and amount of the wrong bracket


def test_bad_input_is_refused():
    m = btc_market(BINANCE_BTC)
    p = positions([[1_000, 0]], [[1.0]], [[50_000]], ["USDT", "BTC"], ["BTCUSDT"], iso=[[10.0]])
    with pytest.raises(InputError, match="isolated margin on a cross-margined account"):
        liquidation(p, m)
    bad = m.copy(deep=True)
    bad["haircut"].values[1] = -0.1
    with pytest.raises(InputError, match="haircut"):
        liquidation(positions([[1_000, 0]], [[1.0]], [[50_000]], ["USDT", "BTC"], ["BTCUSDT"]), bad)
    unknown = positions([[1_000, 0]], [[1.0]], [[50_000]], ["USDT", "BTC"], ["ETHUSDT"])
    with pytest.raises(InputError, match="absent from the market"):
        liquidation(unknown, m)


# ------------------------------------------------------------- random accounts

ASSETS = ["USDT", "BTC", "ETH"]
INSTRUMENTS = ["BTCUSDT", "ETHUSDT", "BTCUSD_PERP", "BTC-C", "ETH-P"]


def random_market():
    return market(
        {"USDT": USDT, "BTC": {"price": 50_000.0, "haircut": 0.05, "beta": 1.0},
         "ETH": {"price": 2_500.0, "haircut": 0.1, "beta": 1.3}},
        {"BTCUSDT": {"kind": "linear", "underlying": "BTC", "mark_price": 50_010.0, "brackets": BINANCE_BTC},
         "ETHUSDT": {"kind": "linear", "underlying": "ETH", "mark_price": 2_499.0,
                     "brackets": [[0, 0.005, 0], [10_000, 0.0065, 15], [100_000, 0.01, 365]]},
         "BTCUSD_PERP": {"kind": "inverse", "underlying": "BTC", "mark_price": 50_000.0,
                         "brackets": [[0, 0.005, 0], [100_000, 0.01, 500]]},
         "BTC-C": {"kind": "option", "underlying": "BTC", "mark_price": 2_000.0, "strike": 55_000,
                   "expiry": "2026-03-01", "call_put": "call", "implied_vol": 0.6},
         "ETH-P": {"kind": "option", "underlying": "ETH", "mark_price": 200.0, "strike": 2_300,
                   "expiry": "2026-02-01", "call_put": "put", "implied_vol": 0.8}})


@st.composite
def accounts(draw):
    isolated = draw(st.booleans())
    scale = [1, 0.05, 0.5, 300, 0.3]
    held = draw(st.lists(st.booleans(), min_size=5, max_size=5))
    if isolated:
        held[3] = held[4] = False  # isolated accounts hold perpetuals only
    q = [draw(st.floats(-3, 3).filter(lambda x: abs(x) > 0.01)) * s if h else 0.0 for h, s in zip(held, scale)]
    q[2] = round(q[2] * 100)  # USD contracts
    entry = [draw(st.floats(0.9, 1.1)) * p if qq else np.nan
             for qq, p in zip(q, [50_000, 2_500, 50_000, 1_000, 200])]
    balance = [draw(st.floats(-20_000, 60_000)), draw(st.floats(-0.5, 2)), draw(st.floats(-5, 20))]
    iso = [abs(qq) * (e if i != 2 else 1 / e) * draw(st.floats(0.02, 0.5)) if isolated and qq else 0.0
           for i, (qq, e) in enumerate(zip(q, entry))]
    if isolated:
        balance = [max(b, 0.0) for b in balance]
    return balance, q, entry, isolated, iso


def reference_inputs(mkt_ds, acc):
    m = market_arrays(mkt_ds)
    kinds = list(mkt_ds.kind.values)
    mkt = dict(m._asdict(), kind=kinds, call=m.is_call)
    balance, q, entry, isolated, iso = acc
    return mkt, {"balance": balance, "position": q, "entry": entry, "isolated": isolated, "iso_margin": iso}


def liquidated(acc, mkt, scenario):
    """Whether some part of the account has C < R (R > 0; C/R is infinite where R = 0)."""
    return any(r > 0 and c < r for c, r in margin_parts(acc, mkt, *scenario))


def run_liquidation(p, mkt_ds, backend, **kw):
    if backend == "gpu":
        from gpu_risk.backend import to_backend

        p = to_backend(p.chunk({"account": 1}), "gpu")
        return liquidation(p, mkt_ds, **kw).compute()
    return liquidation(p, mkt_ds, **kw)


@settings(max_examples=int(__import__("os").environ.get("LIQ_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # `backend` holds no state
@given(acc=accounts())
def test_random_accounts_roots_are_exact_and_nearest(acc, backend):
    mkt_ds = random_market()
    balance, q, entry, isolated, iso = acc
    p = positions([balance], [q], [entry], ASSETS, INSTRUMENTS, mode="isolated" if isolated else "cross",
                  iso=[iso])
    r = run_liquidation(p, mkt_ds, backend, validate=False)
    mkt, ref_acc = reference_inputs(mkt_ds, acc)
    np.testing.assert_allclose(r.collateral_ratio.values[0], collateral_ratio(ref_acc, mkt), rtol=1e-12)
    parts_now = margin_parts(ref_acc, mkt, np.ones(len(mkt["price"])), np.ones(len(mkt["mark"])))
    scale = gross(ref_acc, mkt, np.ones(len(mkt["price"])), np.ones(len(mkt["mark"]))) + 1.0
    for name, k in (("collateral_value", 0), ("requirement", 1)):
        np.testing.assert_allclose(r[name].values[0], sum(part[k] for part in parts_now), rtol=1e-12,
                                   atol=1e-12 * scale, err_msg=name)
    unit = [mkt["mark"][i] if mkt["kind"][i] == "linear" else 1.0 if mkt["kind"][i] == "inverse"
            else mkt["price"][mkt["underlying"][i]] for i in range(len(INSTRUMENTS))]
    borrowed = sum(-b * mkt["price"][s] for s, b in enumerate(ref_acc["balance"]) if b < 0)
    np.testing.assert_allclose(r.gross_exposure.values[0],
                               sum(abs(q) * u for q, u in zip(ref_acc["position"], unit)) + borrowed, rtol=1e-12)
    for i in range(len(INSTRUMENTS)):
        lp = r.liquidation_price.values[0, i]
        if np.isnan(lp):
            continue
        f = lp / mkt["mark"][i]
        scenario = price_scenario(mkt, i, f)
        parts = margin_parts(ref_acc, mkt, *scenario)
        # some part of the account is at C = R there: to 1e-9 of C/R, or of the account's
        # gross terms where C and R are small differences of large terms (ill-conditioned:
        # the root is then exact to adjacent floating-point numbers, not C/R to 1e-9)
        assert min(abs(c - r) / max(abs(c), r) for c, r in parts if r > 0) < 1e-9 or \
            min(abs(c - r) for c, r in parts if r > 0) < 1e-9 * gross(ref_acc, mkt, *scenario)
        # and no root nearer the current price: the sign of min(C - R) does not change on a
        # fine grid strictly between the current price and the root
        grid = 1 + (f - 1) * np.linspace(0.001, 0.999, 300)
        signs = {liquidated(ref_acc, mkt, price_scenario(mkt, i, g)) for g in grid}
        assert len(signs) == 1
    for col in ("liquidation_shock_down", "liquidation_shock_up"):
        s = r[col].values[0]
        if np.isnan(s):
            continue
        scenario = shock_scenario(mkt, s)
        parts = margin_parts(ref_acc, mkt, *scenario)
        assert min(abs(c - r) / max(abs(c), r) for c, r in parts if r > 0) < 1e-9 or \
            min(abs(c - r) for c, r in parts if r > 0) < 1e-9 * gross(ref_acc, mkt, *scenario)
        assert (mkt["price"] * shock_scenario(mkt, s)[0] > 0).all()
        grid = s * np.linspace(0.001, 0.999, 300)
        signs = {liquidated(ref_acc, mkt, shock_scenario(mkt, g)) for g in grid}
        assert len(signs) == 1


def test_lazy_in_lazy_out_and_chunking(tiny_dataset):
    from gpu_risk import store

    m = store.open_market(tiny_dataset["market"], tiny_dataset["days"][0])
    p = store.open_positions(tiny_dataset["positions"], tiny_dataset["days"][0], market=m)
    lazy = liquidation(p.chunk({"account": 700}), m)
    assert isinstance(lazy.liquidation_price.data, __import__("dask").array.Array)
    a = lazy.compute()
    b = liquidation(p.load(), m)
    per_account = ["collateral_ratio", "liquidation_price", "distance_to_liquidation",
                   "liquidation_shock_down", "liquidation_shock_up"]
    xr.testing.assert_identical(a[per_account], b[per_account])  # bit for bit
    # sums over accounts: equal to rounding (the order of the partial sums follows the chunks)
    xr.testing.assert_allclose(a.drop_vars(per_account), b.drop_vars(per_account), rtol=1e-12)
    # C/R is infinite exactly where nothing is required: no perpetual position and no debt
    kind = m.kind.values
    held = p.load()
    requires = (held.position.values[:, kind != "option"] != 0).any(1) | (held.balance.values < 0).any(1)
    np.testing.assert_array_equal(np.isinf(a.collateral_ratio.values), ~requires)
    assert not np.isnan(a.collateral_ratio.values).any()
    for name in a.data_vars:
        assert a[name].attrs["units"] and a[name].attrs["long_name"]
    # the map holds the notional of every position with a liquidation price inside the bins
    assert float(a.liquidation_map.sum()) > 0


def test_numba_and_cuda_twins_share_their_capacities():
    """The CUDA source's capacities are generated from the numba module's constants."""
    import re

    from gpu_risk.kernels import liquidation as kernels
    from gpu_risk.kernels import stress as stress_kernels

    source = kernels.CUDA_SOURCE + stress_kernels.STRESS_CUDA_SOURCE
    defined = dict(re.findall(r"#define (\w+) (\d+)", source))
    assert int(defined["MAX_KINKS"]) == kernels.MAX_KINKS
    assert int(defined["OPTION_STEPS"]) == kernels.OPTION_STEPS
    assert int(defined["MAX_ASSETS"]) == kernels.GPU_MAX_ASSETS
    assert int(defined["MAX_INST"]) == kernels.GPU_MAX_INSTRUMENTS
    assert len(re.findall(r"#define MAX_KINKS", source)) == 1  # no second, drifting copy


def test_too_many_bracket_boundaries_raise_before_computing():
    """An account crossing more bracket boundaries than the root search holds is refused,
    naming the account, instead of having boundaries dropped (a wrong liquidation price)."""
    from gpu_risk.kernels.liquidation import MAX_KINKS

    from gpu_risk.errors import InputError

    n_brackets = 200
    floors = [[float(k * 1000), 0.004 + k * 1e-5, float(k)] for k in range(n_brackets)]
    spec = {"assets": {"USDT": {"price": 1.0, "haircut": 0.0, "beta": 0.0},
                       "BTC": {"price": 50_000.0, "haircut": 0.0, "beta": 1.0}},
            "instruments": {f"P{i}": {"kind": "linear", "underlying": "BTC", "mark_price": 50_000.0,
                                      "brackets": floors} for i in range(4)}}
    market = market_from_dict(spec)
    n = 3
    position = np.zeros((n, 4))
    position[1, :] = 1.0  # 4 x 199 boundaries > MAX_KINKS - 2
    position[2, :2] = 1.0  # 2 x 199: fits
    positions = xr.Dataset(
        {"balance": (("account", "asset"), np.full((n, 2), 1e5)),
         "position": (("account", "instrument"), position),
         "entry_price": (("account", "instrument"), np.where(position != 0, 50_000.0, np.nan)),
         "isolated_margin": (("account", "instrument"), np.zeros((n, 4))),
         "margin_mode": ("account", np.array(["cross"] * n, dtype=object))},
        coords={"account": np.array([10, 11, 12]), "asset": ["USDT", "BTC"],
                "instrument": [f"P{i}" for i in range(4)]})
    assert 2 + 4 * (n_brackets - 1) > MAX_KINKS >= 2 + 2 * (n_brackets - 1)
    with pytest.raises(InputError, match="bracket boundaries") as info:
        liquidation(positions, market)
    assert info.value.index == 1 and info.value.count == 1
    liquidation(positions.isel(account=[0, 2]), market)  # within the capacity: computed
