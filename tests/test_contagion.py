"""Portfolio contagion (SPEC section 5) against a brute-force simulator, and against the
single-instrument cascade where the two must agree."""

import copy
import math

import numpy as np
import pytest
import xarray as xr
from conftest import MARKET_SPEC
from contagion_reference import contagion_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from liquidation_reference import black76, margin_parts

from gpu_risk import cascade
from gpu_risk.contagion import contagion, reference_instruments
from gpu_risk.errors import InputError
from gpu_risk.liquidation import market_arrays
from gpu_risk.store import market_from_dict

SPEC = copy.deepcopy(MARKET_SPEC)
SPEC["instruments"]["ETHUSDT"] = {"kind": "linear", "underlying": "ETH", "mark_price": 2_000.0,
                                  "brackets": [[0, 0.005, 0], [100_000, 0.01, 500]]}
PERPS = {"BTCUSDT": 50_000.0, "BTCUSD_PERP": 50_010.0, "ETHUSDT": 2_000.0}


def make_books(rng, levels=6, thin=1.0, start="2026-01-05T12:00"):
    """One snapshot per perpetual around its mark: tick 0.01 % of the price, sizes such
    that a few leveraged accounts exhaust some of them."""
    nodes = {}
    for name, mark in PERPS.items():
        tick = mark * 1e-4
        bid = mark - tick * (1 + np.cumsum(rng.integers(1, 4, levels)))
        ask = mark + tick * (1 + np.cumsum(rng.integers(1, 4, levels)))
        unit = 50_000.0 if name == "BTCUSD_PERP" else (1.0 if name == "BTCUSDT" else 20.0)
        bid_size, ask_size = ((rng.uniform(0.2, 2.0, levels) * unit * thin).round(6) for _ in range(2))
        nodes[f"/{name}"] = xr.Dataset(
            {"bid_price": (("time", "level"), bid[None]), "bid_size": (("time", "level"), bid_size[None]),
             "ask_price": (("time", "level"), ask[None]), "ask_size": (("time", "level"), ask_size[None])},
            coords={"time": [np.datetime64(start, "ns")], "level": np.arange(1, levels + 1)})
    return xr.DataTree.from_dict(nodes)


def make_accounts(rng, market, n=25, single=False, stable_only=False):
    """Leveraged accounts: cross or isolated, long or short, on one or several perpetuals,
    with stable or volatile collateral."""
    instruments = list(market.instrument.values)
    assets = list(market.asset.values)
    position = np.zeros((n, len(instruments)))
    entry = np.full((n, len(instruments)), np.nan)
    balance = np.zeros((n, len(assets)))
    mode = np.where(rng.random(n) < (0.0 if single else 0.35), "isolated", "cross").astype(object)
    iso = np.zeros_like(position)
    for a in range(n):
        equity = rng.uniform(2_000, 20_000)
        names = [str(rng.choice(list(PERPS)))] if single else [p for p in PERPS if rng.random() < 0.6] or ["ETHUSDT"]
        for name in names:
            i = instruments.index(name)
            mark = PERPS[name]
            notional = equity * rng.uniform(5, 40) / len(names) * (1 if rng.random() < 0.7 else -1)
            position[a, i] = notional if name == "BTCUSD_PERP" else notional / mark
            entry[a, i] = mark * rng.uniform(0.997, 1.003)
            if mode[a] == "isolated":
                iso[a, i] = abs(notional) / rng.uniform(10, 40) / (mark if name == "BTCUSD_PERP" else 1.0)
        if stable_only or rng.random() < 0.5:
            balance[a, assets.index("USDT")] = equity
        else:
            coin = str(rng.choice(["BTC", "ETH"]))
            balance[a, assets.index(coin)] = equity / market.price.values[assets.index(coin)]
            if rng.random() < 0.3:
                balance[a, assets.index("USDT")] = -0.2 * equity  # borrowed against it
    return xr.Dataset(
        {"balance": (("account", "asset"), balance), "position": (("account", "instrument"), position),
         "entry_price": (("account", "instrument"), entry), "margin_mode": ("account", mode),
         "isolated_margin": (("account", "instrument"), iso)},
        coords={"account": np.arange(n), "asset": assets, "instrument": instruments})


def reference_inputs(book, positions, market):
    m = market_arrays(market)
    names = list(market.instrument.values)
    books = {names.index(n): tuple(np.asarray(book[n].to_dataset()[v].values[0], float)
                                   for v in ("bid_price", "bid_size", "ask_price", "ask_size")) for n in book.children}
    kinds = {0: "linear", 1: "inverse", 2: "option"}
    booked = np.array([i in books for i in range(len(names))])
    mkt = {"price": m.price, "haircut": m.haircut, "beta": m.beta, "kind": [kinds[int(k)] for k in m.kind],
           "underlying": list(m.underlying), "mark": m.mark, "strike": m.strike, "years": m.years, "vol": m.vol,
           "call": list(m.is_call), "floor": m.floor, "mmr": m.mmr, "amount": m.amount,
           "reference": reference_instruments(market, positions, booked)}
    accounts = [{"balance": positions.balance.values[a], "position": positions.position.values[a],
                 "entry": positions.entry_price.values[a], "iso_margin": positions.isolated_margin.values[a],
                 "isolated": positions.margin_mode.values[a] == "isolated"} for a in range(positions.sizes["account"])]
    return books, accounts, mkt


SHOCKS = [-0.08, -0.03, -0.01, 0.01, 0.03, 0.08]


def assert_matches_simulator(out, book, positions, market, depth=None, sums_rtol=1e-9, sums_atol=(1e-6, 1e-6)):
    """Every cell of a one-time contagion result against the brute-force simulator: prices
    to 1e-12, notional and shortfall to ``sums_rtol`` (absolute ``sums_atol``), counts,
    rounds and exhaustion exactly."""
    books, accounts, mkt = reference_inputs(book, positions, market)
    for k, s0 in enumerate(SHOCKS):
        final, notional, liquidated, rounds, exhausted, shortfall = contagion_reference(
            books, accounts, mkt, s0, depth=None if depth is None else dict.fromkeys(books, depth))
        cell = out.isel(time=0, initial_shock=k)
        np.testing.assert_allclose(cell.final_price.values, final, rtol=1e-12)
        np.testing.assert_allclose(cell.liquidated_notional.values, notional, rtol=sums_rtol, atol=sums_atol[0])
        np.testing.assert_array_equal(cell.accounts_liquidated.values, liquidated)
        np.testing.assert_array_equal(cell.rounds.values, rounds)
        np.testing.assert_array_equal(cell.book_exhausted.values, exhausted)
        np.testing.assert_allclose(float(out.shortfall.isel(time=0, initial_shock=k)), shortfall, rtol=sums_rtol,
                                   atol=sums_atol[1])


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.3, 1.0, 5.0]))
def test_contagion_matches_the_brute_force_simulator(seed, thin):
    """Random multi-instrument portfolios (cross and isolated, long and short, stable and
    volatile collateral, books thin enough to run out): every cell equals the simulator."""
    rng = np.random.default_rng(seed)
    market = market_from_dict(SPEC)
    book = make_books(rng, thin=thin)
    positions = make_accounts(rng, market)
    # ties: some accounts twice over (liquidated in the same round, their orders side by side)
    twice = rng.choice(positions.sizes["account"], 5, replace=False)
    positions = xr.concat([positions, positions.isel(account=twice).assign_coords(account=np.arange(100, 105))],
                          "account")
    out = contagion(book, positions, market, book["BTCUSDT"].time.values, SHOCKS)
    assert_matches_simulator(out, book, positions, market)



def depth_market(model):
    """The test market with the power model's gamma on every perpetual."""
    spec = copy.deepcopy(SPEC)
    for name in PERPS:
        spec["instruments"][name]["depth_exponent"] = model[1] if model[0] == "power" else None
    return market_from_dict(spec)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([("flat", 0.002), ("flat", 0.02), ("power", 0.8),
                                                   ("power", 1.6)]))
def test_depth_models_match_the_simulator(seed, model):
    """Thin books that run out, with depth beyond the visible levels: the kernel's closed
    forms against the simulator's slice-by-slice sums of the documented models."""
    rng = np.random.default_rng(seed)
    market = depth_market(model)
    book = make_books(rng, thin=0.3)
    positions = make_accounts(rng, market, n=30)
    out = contagion(book, positions, market, book["BTCUSDT"].time.values, SHOCKS,
                    depth_extrapolation=model[1] if model[0] == "flat" else "power")
    assert out.attrs["depth_extrapolation"] == ("power" if model[0] == "power" else str(model[1]))
    assert_matches_simulator(out, book, positions, market, depth=model, sums_rtol=1e-7, sums_atol=(1e-6, 1e-4))


def test_depth_models_move_prices_past_the_book_and_equal_the_cascade():
    """Single-perpetual accounts with stable collateral: with either depth model contagion
    ends where the single-instrument cascade does, beyond the visible levels; the power
    model with more depth (larger gamma) ends nearer the mid."""
    rng = np.random.default_rng(3)
    spec = copy.deepcopy(SPEC)
    spec["assets"]["ETH"]["beta"] = 1.0
    book = make_books(rng, thin=0.3)
    positions = make_accounts(rng, market_from_dict(spec), n=40, single=True, stable_only=True)
    when = book["BTCUSDT"].time.values
    ends = {}
    for setting, gamma in ((0.002, None), ("power", 0.8), ("power", 1.6)):
        for name in PERPS:
            spec["instruments"][name]["depth_exponent"] = gamma
        market = market_from_dict(spec)
        ours = contagion(book, positions, market, when, SHOCKS, depth_extrapolation=setting).sel(
            instrument=list(PERPS))
        theirs = cascade(book, positions, market, when, SHOCKS, depth_extrapolation=setting).sel(
            instrument=list(PERPS))
        np.testing.assert_allclose(ours.final_price.values, theirs.final_price.values, rtol=1e-13)
        np.testing.assert_array_equal(ours.book_exhausted.values, theirs.book_exhausted.values)
        ends[gamma] = ours
    out = ends[None]
    deepest = {name: (float(book[name].bid_price[0, -1]), float(book[name].ask_price[0, -1])) for name in PERPS}
    beyond = [bool(out.book_exhausted.sel(instrument=n, initial_shock=s).item()) and (
        out.final_price.sel(instrument=n, initial_shock=s).item() < deepest[n][0] * (1 + s) - 1e-9 if s < 0 else
        out.final_price.sel(instrument=n, initial_shock=s).item() > deepest[n][1] * (1 + s) + 1e-9)
        for n in PERPS for s in SHOCKS]
    assert any(beyond)
    moved = lambda ds: np.abs(ds.final_price / ds.mid_price - 1).values  # noqa: E731
    assert (moved(ends[1.6]) <= moved(ends[0.8]) + 1e-12).all() and (moved(ends[1.6]) < moved(ends[0.8])).any()


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([None, 0.002]))
def test_accounts_that_follow_one_mark_match_the_simulator(seed, setting):
    """Cross accounts holding one linear perpetual against USDT are liquidated from sorted
    tables of thresholds (the others evaluated directly): every cell equals the simulator,
    with accounts duplicated (equal thresholds)."""
    rng = np.random.default_rng(seed)
    market = market_from_dict(SPEC)
    book = make_books(rng, thin=float(rng.choice([0.3, 1.0])))
    positions = make_accounts(rng, market, n=60, single=True, stable_only=True)
    positions = xr.concat([positions, positions.isel(account=slice(0, 10)).assign_coords(
        account=np.arange(1000, 1010))], "account")
    out = contagion(book, positions, market, book["BTCUSDT"].time.values, SHOCKS, depth_extrapolation=setting)
    assert_matches_simulator(out, book, positions, market, depth=("flat", setting) if setting else None,
                             sums_rtol=1e-7, sums_atol=(1e-6, 1e-4))


def test_something_happens_in_the_random_cases():
    """The simulator comparison is not vacuous: accounts are liquidated, books run out and
    instruments pull each other (an account closed on one book closes its other positions)."""
    rng = np.random.default_rng(11)
    market = market_from_dict(SPEC)
    out = contagion(make_books(rng, thin=0.3), make_accounts(rng, market, n=40), market,
                    np.datetime64("2026-01-05T12:00", "ns"), SHOCKS)
    assert int(out.accounts_liquidated.sum()) > 10 and bool(out.book_exhausted.any())
    assert float(out.shortfall.max()) > 0 and int(out.rounds.max()) >= 2
    # long-only cross accounts on several books: contagion ends below the single-instrument
    # cascade in some cells (an account closed by one book sells on the others)
    rng = np.random.default_rng(1)
    book = make_books(rng, thin=1.0)
    positions = long_only_cross(make_accounts(rng, market, n=40))
    when = book["BTCUSDT"].time.values
    below = contagion(book, positions, market, when, DOWN).final_price < cascade(
        book, positions, market, when, DOWN).final_price
    assert int(below.sum()) >= 3


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_single_perpetual_accounts_with_stable_collateral_equal_the_cascade(seed):
    """Every account holds one perpetual and only USDT: contagion's final price is the
    single-instrument cascade's, exactly (assets of beta 1, so that both move books by
    1 + s0)."""
    rng = np.random.default_rng(seed)
    spec = copy.deepcopy(SPEC)
    spec["assets"]["ETH"]["beta"] = 1.0
    market = market_from_dict(spec)
    book = make_books(rng, thin=float(rng.choice([0.3, 1.0])))
    positions = make_accounts(rng, market, n=40, single=True, stable_only=True)
    when = book["BTCUSDT"].time.values
    ours = contagion(book, positions, market, when, SHOCKS)
    theirs = cascade(book, positions, market, when, SHOCKS)
    assert int(theirs.rounds.max()) >= 1  # cascades happen: the equality is not between two idle books
    for name in PERPS:
        np.testing.assert_array_equal(ours.final_price.sel(instrument=name).values,
                                      theirs.final_price.sel(instrument=name).values, err_msg=name)
        np.testing.assert_array_equal(ours.book_exhausted.sel(instrument=name).values,
                                      theirs.book_exhausted.sel(instrument=name).values, err_msg=name)


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(0)
    market = market_from_dict(SPEC)
    book = make_books(rng)
    positions = make_accounts(rng, market)
    with pytest.raises(ValueError, match="non-zero"):
        contagion(book, positions, market, book["BTCUSDT"].time.values, [0.0])
    bad = xr.DataTree.from_dict({"/NOPE": book["BTCUSDT"].to_dataset()})
    with pytest.raises(Exception, match="not in the market"):
        contagion(bad, positions, market, book["BTCUSDT"].time.values, [-0.1])


def long_only_cross(positions):
    """The same accounts, every position long, every account cross."""
    return positions.assign(position=abs(positions.position), margin_mode=("account", np.full(
        positions.sizes["account"], "cross", dtype=object)), isolated_margin=positions.isolated_margin * 0)


DOWN = [-0.12, -0.08, -0.05, -0.03, -0.02, -0.01]


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.3, 1.0]))
def test_long_only_cross_larger_down_shock_never_ends_higher(seed, thin):
    rng = np.random.default_rng(seed)
    market = market_from_dict(SPEC)
    book = make_books(rng, thin=thin)
    positions = long_only_cross(make_accounts(rng, market, n=40))
    out = contagion(book, positions, market, book["BTCUSDT"].time.values, DOWN)
    for name in PERPS:
        prices = out.final_price.sel(instrument=name).isel(time=0).values  # shocks ascending: -12 % first
        assert (np.diff(prices) >= 0).all(), (name, prices)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.3, 1.0]))
def test_long_only_cross_contagion_never_ends_above_the_cascade(seed, thin):
    """Accounts on several perpetuals and coins as collateral: when one book's cascade
    liquidates an account, its other positions are sold too, and every asset falls with
    its book, so no instrument ends above its own single-instrument cascade."""
    rng = np.random.default_rng(seed)
    market = market_from_dict(SPEC)
    book = make_books(rng, thin=thin)
    positions = long_only_cross(make_accounts(rng, market, n=40))
    when = book["BTCUSDT"].time.values
    ours = contagion(book, positions, market, when, DOWN)
    theirs = cascade(book, positions, market, when, DOWN)
    for name in PERPS:
        a = ours.final_price.sel(instrument=name).values
        b = theirs.final_price.sel(instrument=name).values
        assert (a <= b).all(), (name, a, b)


def test_the_command_writes_what_the_api_computes_and_the_report_shows_it(tmp_path):
    """`gpu-risk contagion` on synthetic stores: each day's results equal the function on
    that day's inputs, and the report has its section."""
    import subprocess
    import sys

    from conftest import synthetic_store

    from gpu_risk import open_book, open_market, open_positions, store

    made = synthetic_store(tmp_path / "d", days=2, instruments=2, accounts=300, snapshots_per_day=400, levels=5)
    done = subprocess.run([sys.executable, "-m", "gpu_risk.cli", "contagion", "--book", made["book"], "--positions",
                           made["positions"], "--market", made["market"], "--out", str(tmp_path / "r.zarr"),
                           "--every", "6h", "--initial-shocks=-10%,-3%,3%", "--report", str(tmp_path / "r.html"),
                           "--scheduler", "sync"], capture_output=True, text=True)
    assert done.returncode in (0, 3), done.stderr
    day = made["days"][1]
    got = store.open_results(tmp_path / "r.zarr")[day]["contagion"].to_dataset().load()
    market = open_market(made["market"], day)
    book = open_book(made["book"], start=day, end=day)
    want = contagion(book, open_positions(made["positions"], day, market=market), market, "6h", [-0.1, -0.03, 0.03])
    for name in ("final_price", "liquidated_notional", "accounts_liquidated", "shortfall"):
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    assert got.sizes["time"] == 3 and "Portfolio contagion" in (tmp_path / "r.html").read_text()  # 06, 12, 18 h


def _shortfall_reference(book, positions, market, s0, vol_shift):
    """Plain loops: accounts liquidated (any part C < R) under the scenario, their positions
    closed at the mark times the relative price the book gives (sells and buys meeting at
    the mark first), their bad debt summed."""
    books, accounts, mkt = reference_inputs(book, positions, market)
    mkt = dict(mkt, vol=np.maximum(mkt["vol"] + vol_shift, 0.0))
    f = np.array([1 + b * s0 for b in mkt["beta"]])
    g = np.array([f[u] for u in mkt["underlying"]])
    gone = [any(c < r for c, r in margin_parts(acc, mkt, f, g)) for acc in accounts]
    ratio = {}
    for i, (bp, bq, ap, aq) in books.items():
        sold = sum(acc["position"][i] for acc, x in zip(accounts, gone) if x and acc["position"][i] > 0)
        bought = sum(-acc["position"][i] for acc, x in zip(accounts, gone) if x and acc["position"][i] < 0)
        net = sold - bought
        prices, sizes = (bp, bq) if net > 0 else (ap, aq)
        left, total, deepest = abs(net), 0.0, 1.0
        for p, q in zip(prices / prices[0], sizes):
            if left <= 0:
                break
            if q > 0 and not math.isnan(p):
                take = min(q, left)
                total, left, deepest = total + take * p, left - take, p
        walked = (total + left * deepest) / abs(net) if net else 1.0
        matched = min(sold, bought)
        ratio[i] = ((matched + net * walked) / sold if net > 0 else 1.0,
                    (matched - net * walked) / bought if net < 0 else 1.0)
    bad = 0.0
    for acc, x in zip(accounts, gone):
        if not x:
            continue
        value = sum(b * mkt["price"][s] * f[s] for s, b in enumerate(acc["balance"]))
        for i, q in enumerate(acc["position"]):
            u = mkt["underlying"][i]
            coin = mkt["price"][u] * f[u]
            if q != 0:
                r = ratio.get(i, (1.0, 1.0))[0 if q > 0 else 1]
                mark = mkt["mark"][i] * g[i] * r
                if mkt["kind"][i] == "linear":
                    value += q * (mark - acc["entry"][i])
                elif mkt["kind"][i] == "inverse":
                    value += q * (1 / acc["entry"][i] - 1 / mark) * coin
                else:
                    value += q * black76(coin, mkt["strike"][i], mkt["years"][i], mkt["vol"][i], mkt["call"][i])
            if acc["isolated"] and acc["iso_margin"][i]:
                value += acc["iso_margin"][i] * (coin if mkt["kind"][i] == "inverse" else 1.0)
        bad += max(0.0, -value)
    return bad


PRICE_SHOCKS = [-0.3, -0.15, -0.05, 0.0, 0.05, 0.15, 0.3]


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_liquidity_shortfall_matches_plain_loops_and_is_never_below_the_shortfall(seed):
    from gpu_risk import stress_surface

    rng = np.random.default_rng(seed)
    market = market_from_dict(SPEC)
    book = make_books(rng, thin=0.3)
    positions = make_accounts(rng, market, n=30)
    out = stress_surface(positions, market, PRICE_SHOCKS, vol_shocks=[-0.1, 0.0, 0.2], book=book)
    for j, s0 in enumerate(PRICE_SHOCKS):
        for k, shift in enumerate([-0.1, 0.0, 0.2]):
            want = _shortfall_reference(book, positions, market, s0, shift)
            np.testing.assert_allclose(float(out.liquidity_shortfall[j, k]), want, rtol=1e-9, atol=1e-6)
    assert (out.liquidity_shortfall >= out.shortfall * (1 - 1e-12)).all()


def test_liquidity_shortfall_is_the_shortfall_with_unlimited_depth_and_above_it_when_thin():
    from gpu_risk import stress_surface

    rng = np.random.default_rng(4)
    market = market_from_dict(SPEC)
    positions = long_only_cross(make_accounts(rng, market, n=60))  # every forced flow one-sided: sells
    deep = make_books(np.random.default_rng(5), thin=1e9)
    thin = make_books(np.random.default_rng(5), thin=0.05)
    a = stress_surface(positions, market, PRICE_SHOCKS, haircut_shocks=[0.0, 0.1], book=deep)
    np.testing.assert_allclose(a.liquidity_shortfall.values, a.shortfall.values, rtol=1e-12)
    b = stress_surface(positions, market, PRICE_SHOCKS, haircut_shocks=[0.0, 0.1], book=thin)
    assert (b.liquidity_shortfall >= b.shortfall * (1 - 1e-12)).all()
    assert float((b.liquidity_shortfall - b.shortfall).max()) > 0
    assert "liquidity_shortfall" not in stress_surface(positions, market, PRICE_SHOCKS, haircut_shocks=[0.0])


@pytest.mark.cupy
def test_gpu_matches_cpu():
    """On a device: positions backed by CuPy run the CUDA kernel, which must give the numba
    kernel's cells (prices and counts exactly, sums to 1e-12)."""
    from gpu_risk.backend import gpu_available, to_backend

    ok, why = gpu_available()
    if not ok:
        pytest.skip(why)
    rng = np.random.default_rng(5)
    market = market_from_dict(SPEC)
    for thin in (0.3, 1.0):
        book, positions = make_books(rng, thin=thin), make_accounts(rng, market, n=60)
        when = book["BTCUSDT"].time.values
        cpu = contagion(book, positions, market, when, SHOCKS)
        gpu = contagion(book, to_backend(positions.chunk(), "gpu"), market, when, SHOCKS)
        for name in ("final_price", "accounts_liquidated", "rounds", "book_exhausted"):
            np.testing.assert_array_equal(gpu[name].values, cpu[name].values, err_msg=name)
        for name in ("liquidated_notional", "shortfall"):
            np.testing.assert_allclose(gpu[name].values, cpu[name].values, rtol=1e-12, atol=1e-9, err_msg=name)


def test_pull_is_the_difference_the_source_book_makes():
    """``pull[j, i]``: i's final move with every book minus without j's book (the public
    function on a book without node j), per unit of shock; zero between instruments that
    share no account or asset, and not zero somewhere for cross accounts on several books."""
    rng = np.random.default_rng(0)
    market = market_from_dict(SPEC)
    book = make_books(rng, thin=0.3)
    positions = make_accounts(rng, market, n=40)
    when = book["BTCUSDT"].time.values
    full = contagion(book, positions, market, when, SHOCKS, pull=True, depth_extrapolation=0.002)
    for j in PERPS:
        rest = xr.DataTree.from_dict({f"/{n}": book[n].to_dataset() for n in PERPS if n != j})
        without = contagion(rest, positions, market, when, SHOCKS, depth_extrapolation=0.002)
        for i in PERPS:
            if i == j:
                assert full.pull.sel(source=j, instrument=i).isnull().all()
                continue
            want = ((full.final_price.sel(instrument=i) - without.final_price.sel(instrument=i))
                    / (full.mid_price.sel(instrument=i) * full.initial_shock))
            np.testing.assert_array_equal(full.pull.sel(source=j, instrument=i).values, want.values)
    off = full.pull.sel(source=list(PERPS), instrument=list(PERPS))
    assert float(np.abs(off).max()) > 0.01
    # one perpetual each against USDT: ETH's book and BTC's books never touch each other's
    # accounts (the inverse BTCUSD_PERP is valued in BTC, whose price follows a BTC book, so
    # the two BTC books may pull each other)
    single = make_accounts(rng, market, n=40, single=True, stable_only=True)
    alone = contagion(book, single, market, when, SHOCKS, pull=True, depth_extrapolation=0.002).pull
    btc = ["BTCUSDT", "BTCUSD_PERP"]
    assert (alone.sel(source="ETHUSDT", instrument=btc) == 0).all()
    assert (alone.sel(source=btc, instrument="ETHUSDT") == 0).all()


def test_a_liquidation_result_is_accepted_and_must_match_the_accounts():
    """SPEC's signature takes ``liquidation=``: the same result with it, and an error naming
    the accounts when it is for other accounts."""
    from gpu_risk import liquidation

    rng = np.random.default_rng(4)
    market = market_from_dict(SPEC)
    book = make_books(rng)
    positions = make_accounts(rng, market, n=20)
    when = book["BTCUSDT"].time.values
    liq = liquidation(positions, market).compute()
    xr.testing.assert_identical(contagion(book, positions, market, when, SHOCKS, liquidation=liq),
                                contagion(book, positions, market, when, SHOCKS))
    with pytest.raises(InputError, match="different accounts"):
        contagion(book, positions, market, when, SHOCKS, liquidation=liq.isel(account=slice(1, None)))
