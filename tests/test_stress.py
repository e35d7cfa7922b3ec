"""Stress surfaces (SPEC section 3) against an independent per-account, per-scenario loop
(tests/liquidation_reference.py), consistency with the liquidation family, invariants."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from liquidation_reference import black76, margin_parts, shock_scenario
from test_liquidation import ASSETS, INSTRUMENTS, accounts, positions, random_market

from gpu_risk import store
from gpu_risk.liquidation import liquidation, market_arrays
from gpu_risk.stress import stress_surface

SHOCKS = np.array([-0.5, -0.2, -0.05, 0.0, 0.03, 0.3, 1.0])


def reference_surface(acc, mkt_ds, shocks, second, is_vol):
    """Ratio and full value per (shock, second) with plain loops."""
    base = market_arrays(mkt_ds)
    mkt = dict(base._asdict(), kind=list(mkt_ds.kind.values), call=base.is_call)
    ratio = np.empty((len(shocks), len(second)))
    value = np.empty_like(ratio)
    for k, v in enumerate(second):
        shocked = dict(mkt)
        if is_vol:
            shocked["vol"] = np.maximum(mkt["vol"] + v, 0.0)
        else:
            shocked["haircut"] = np.where(mkt["beta"] != 0, np.minimum(mkt["haircut"] + v, 1.0), mkt["haircut"])
        for j, s in enumerate(shocks):
            a, mk = shock_scenario(shocked, s)
            ratio[j, k] = min((c / r if r > 0 else np.inf) for c, r in margin_parts(acc, shocked, a, mk))
            price, mark = shocked["price"] * a, shocked["mark"] * mk
            n = sum(b * price[i] for i, b in enumerate(acc["balance"]))
            for i, q in enumerate(acc["position"]):
                u = shocked["underlying"][i]
                kind = shocked["kind"][i]
                n += acc["iso_margin"][i] * (price[u] if kind == "inverse" else 1.0)
                if q == 0:
                    continue
                if kind == "linear":
                    n += q * (mark[i] - acc["entry"][i])
                elif kind == "inverse":
                    n += q * (1 / acc["entry"][i] - 1 / mark[i]) * price[u]
                else:
                    n += q * black76(price[u], shocked["strike"][i], shocked["years"][i], shocked["vol"][i],
                                     shocked["call"][i])
            value[j, k] = n
    return ratio, value


@settings(max_examples=30, deadline=None)
@given(accs=st.lists(accounts(), min_size=1, max_size=4), is_vol=st.booleans())
def test_matches_reference_loops(accs, is_vol):
    mkt_ds = random_market()
    second = [-0.2, 0.0, 0.15] if is_vol else [0.0, 0.1, 0.5]
    p = positions([a[0] for a in accs], [a[1] for a in accs], [a[2] for a in accs], ASSETS, INSTRUMENTS,
                  iso=[a[4] for a in accs])
    p["margin_mode"] = ("account", np.array(["isolated" if a[3] else "cross" for a in accs], dtype=object))
    kw = {"vol_shocks": second} if is_vol else {"haircut_shocks": second}
    got = stress_surface(p, mkt_ds, SHOCKS, validate=False, **kw)
    shortfall = np.zeros((len(SHOCKS), len(second)))
    for n, (balance, q, entry, isolated, iso) in enumerate(accs):
        acc = {"balance": balance, "position": q, "entry": entry, "isolated": isolated, "iso_margin": iso}
        ratio, value = reference_surface(acc, mkt_ds, SHOCKS, second, is_vol)
        np.testing.assert_allclose(got.collateral_ratio.values[n], ratio, rtol=1e-12)
        shortfall += np.maximum(-value, 0)
    np.testing.assert_allclose(got.shortfall.values, shortfall, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(got.accounts_liquidated.values,
                                  (got.collateral_ratio.values < 1).sum(axis=0))


def test_ratio_is_one_at_the_liquidation_shock(tiny_dataset):
    m = store.open_market(tiny_dataset["market"], tiny_dataset["days"][0])
    p = store.open_positions(tiny_dataset["positions"], tiny_dataset["days"][0], market=m).load()
    liq = liquidation(p, m)
    s = liq.liquidation_shock_down.values
    pick = np.flatnonzero(np.isfinite(s) & (s < -1e-3))[:40]
    assert pick.size >= 20
    for a in pick:
        r = stress_surface(p.isel(account=[a]), m, [s[a]], vol_shocks=[0.0], validate=False)
        np.testing.assert_allclose(r.collateral_ratio.values.ravel()[0], 1.0, rtol=1e-9)


def test_long_only_ratio_falls_with_the_price_and_chunking_does_not_matter(tiny_dataset):
    m = store.open_market(tiny_dataset["market"], tiny_dataset["days"][0])
    p = store.open_positions(tiny_dataset["positions"], tiny_dataset["days"][0], market=m)
    shocks = np.linspace(-0.6, 0.6, 25)
    a = stress_surface(p.chunk({"account": 333}), m, shocks, haircut_shocks=[0.0, 0.2],
                       aggregate_chunk=97).compute(scheduler="threads")
    b = stress_surface(p.load(), m, shocks, haircut_shocks=[0.0, 0.2])
    xr.testing.assert_identical(a.collateral_ratio, b.collateral_ratio)
    xr.testing.assert_identical(a.accounts_liquidated, b.accounts_liquidated)
    xr.testing.assert_identical(a.worst_collateral_ratio, b.worst_collateral_ratio)
    xr.testing.assert_identical(a.span_requirement, b.span_requirement)
    xr.testing.assert_allclose(a.shortfall, b.shortfall, rtol=1e-12)
    # the in-kernel aggregates are the account surfaces' aggregates
    assert (b.accounts_liquidated == (b.collateral_ratio < 1).sum("account")).all()
    np.testing.assert_array_equal(b.worst_collateral_ratio.values,
                                  b.collateral_ratio.min(("price_shock", "haircut_shock")).values)
    held = p.load()
    kind = m.kind.values
    long_only = ((held.position.values[:, kind == "linear"] >= 0).all(1)
                 & (held.position.values[:, kind != "linear"] == 0).all(1)
                 & (held.position.values != 0).any(1) & (held.balance.values >= 0).all(1)
                 & (held.balance.sel(asset=[x for x in held.asset.values if x not in ("USDT", "USDC")]).values
                    == 0).all(1))
    assert long_only.sum() > 100
    # For a long-only account C - R = W + q (m - e) - (q m mmr - cum) rises with the price (slope
    # q (1 - mmr) > 0), so once liquidated on the way down it stays liquidated further down.
    # (C/R itself is not monotone: it tends to 1/mmr as the price grows, so a lightly
    # leveraged long's ratio above 1/mmr falls as the price rises.)
    below = a.collateral_ratio.values[long_only, :, 0] < 1
    assert (np.diff(below.astype(int), axis=1) <= 0).all()
    assert below.any() and not below.all()
    # a higher haircut never raises a ratio
    assert (a.collateral_ratio.values[:, :, 1] <= a.collateral_ratio.values[:, :, 0] + 1e-12).all()
    # more accounts fail and more bad debt as prices fall (the synthetic book is net long)
    assert a.accounts_liquidated.values[0, 0] > a.accounts_liquidated.values[12, 0]
    assert a.shortfall.values[0, 0] > a.shortfall.values[12, 0]


def test_bad_arguments():
    m = random_market()
    p = positions([[1_000, 0, 0]], [[1.0, 0, 0, 0, 0]], [[50_000, np.nan, np.nan, np.nan, np.nan]],
                  ASSETS, INSTRUMENTS)
    with pytest.raises(ValueError, match="exactly one of"):
        stress_surface(p, m, [0.0])
    with pytest.raises(ValueError, match="exactly one of"):
        stress_surface(p, m, [0.0], vol_shocks=[0], haircut_shocks=[0])
    with pytest.raises(ValueError, match="price <= 0"):
        stress_surface(p, m, [-0.9], vol_shocks=[0.0])  # ETH's beta 1.3
    with pytest.raises(ValueError, match="must stay below 1"):
        stress_surface(p, m, [0.0], vol_shocks=[0.0], span_scan_range=0.6)


def reference_span(acc, mkt, scan, vol_scan, multiple=2.0, cover=0.35):
    """CME SPAN's 16 scenarios written out one by one."""
    def value(x, dv):
        total = 0.0
        for i, q in enumerate(acc["position"]):
            if q == 0:
                continue
            move = 1 + x * scan[i]
            u = mkt["underlying"][i]
            kind = mkt["kind"][i]
            if kind == "linear":
                total += q * (mkt["mark"][i] * move - acc["entry"][i])
            elif kind == "inverse":
                total += q * (1 / acc["entry"][i] - 1 / (mkt["mark"][i] * move)) * mkt["price"][u] * move
            else:
                total += q * black76(mkt["price"][u] * move, mkt["strike"][i], mkt["years"][i],
                                     max(mkt["vol"][i] + dv, 0.0), mkt["call"][i])
        return total
    base = value(0, 0)
    losses = []
    for x in (0, 1 / 3, -1 / 3, 2 / 3, -2 / 3, 1, -1):  # scenarios 1-14
        losses += [base - value(x, vol_scan), base - value(x, -vol_scan)]
    losses += [cover * (base - value(multiple, 0)), cover * (base - value(-multiple, 0))]  # 15-16
    assert len(losses) == 16
    return max(0.0, max(losses))


def test_span_worked_example_and_reference():
    m = random_market()
    # long 1 BTC perpetual at the mark, 10 % scan range: the worst of the 16 is "down 3/3":
    # 5,001 USD (> 35 % of the 2-range move, 3,500.7)
    p = positions([[10_000, 0, 0]], [[1.0, 0, 0, 0, 0]], [[50_010, np.nan, np.nan, np.nan, np.nan]],
                  ASSETS, INSTRUMENTS)
    r = stress_surface(p, m, [0.0], vol_shocks=[0.0], span_scan_range=0.1)
    np.testing.assert_allclose(r.span_requirement.values[0], 5_001.0, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(accs=st.lists(accounts(), min_size=1, max_size=3), scan=st.floats(0.01, 0.15),
       vol_scan=st.floats(0.0, 0.3))
def test_span_matches_reference(accs, scan, vol_scan):
    mkt_ds = random_market()
    p = positions([a[0] for a in accs], [a[1] for a in accs], [a[2] for a in accs], ASSETS, INSTRUMENTS,
                  iso=[a[4] for a in accs])
    p["margin_mode"] = ("account", np.array(["isolated" if a[3] else "cross" for a in accs], dtype=object))
    scans = {name: scan * (1 + 0.5 * k) for k, name in enumerate(INSTRUMENTS)}  # per instrument
    got = stress_surface(p, mkt_ds, [0.0], vol_shocks=[0.0], span_scan_range=scans, span_vol_range=vol_scan,
                         validate=False)
    base = market_arrays(mkt_ds)
    mkt = dict(base._asdict(), kind=list(mkt_ds.kind.values), call=base.is_call)
    for n, (balance, q, entry, isolated, iso) in enumerate(accs):
        acc = {"balance": balance, "position": q, "entry": entry, "isolated": isolated, "iso_margin": iso}
        want = reference_span(acc, mkt, [scans[i] for i in INSTRUMENTS], vol_scan)
        np.testing.assert_allclose(got.span_requirement.values[n], want, rtol=1e-12, atol=1e-9)


@pytest.mark.cupy
def test_gpu_matches_cpu(tiny_dataset):
    """The CUDA kernel against the numba kernel on the synthetic accounts (options, debt,
    isolated), both axes: ratios, aggregates and SPAN to 1e-9."""
    from gpu_risk.backend import gpu_available, to_backend

    ok, why = gpu_available()
    if not ok:
        pytest.skip(why)
    m = store.open_market(tiny_dataset["market"], tiny_dataset["days"][0])
    p = store.open_positions(tiny_dataset["positions"], tiny_dataset["days"][0], market=m)
    for second in ({"vol_shocks": [-0.1, 0.0, 0.2]}, {"haircut_shocks": [0.0, 0.3]}):
        cpu = stress_surface(p.load(), m, SHOCKS, **second)
        gpu = stress_surface(to_backend(p.chunk({"account": 500}), "gpu"), m, SHOCKS, **second).compute()
        for name in ("collateral_ratio", "worst_collateral_ratio", "shortfall", "span_requirement"):
            np.testing.assert_allclose(np.asarray(gpu[name].values), cpu[name].values, rtol=1e-9, atol=1e-9)
        assert (np.asarray(gpu.accounts_liquidated.values) == cpu.accounts_liquidated.values).all()
