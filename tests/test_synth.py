"""The synthetic generator: deterministic, valid, and shaped like real markets."""

import numpy as np
import pandas as pd
import xarray as xr

from gpu_risk import store
from gpu_risk.synth import SynthConfig, synth


def test_synthetic_data_passes_validation(tiny_dataset):
    market = store.open_market(tiny_dataset["market"], tiny_dataset["days"][0])
    positions = store.open_positions(tiny_dataset["positions"], tiny_dataset["days"][0], market=market)
    book = store.open_book(tiny_dataset["book"])  # validates every snapshot
    assert sorted(book.children) == sorted(tiny_dataset["instruments"])
    assert set(tiny_dataset["instruments"]) <= set(market.instrument.values)  # shared names
    assert positions.sizes["account"] == 3000
    for name in book.children:
        ds = book[name].to_dataset()
        assert ds.sizes["time"] == 2 * 6000 and ds.sizes["level"] == 5
        assert sorted({str(t)[:10] for t in ds.time.values[[0, -1]]}) == tiny_dataset["days"]


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    cfg = {"days": 1, "instruments": 2, "accounts": 500, "levels": 3, "snapshots_per_day": 2000,
           "book_chunk_rows": 512, "account_chunk_rows": 128}
    a = synth(SynthConfig(out=str(tmp_path / "a"), seed=7, **cfg))
    b = synth(SynthConfig(out=str(tmp_path / "b"), seed=7, **cfg))
    c = synth(SynthConfig(out=str(tmp_path / "c"), seed=8, **cfg))
    ba, bb, bc = (store.open_book(x["book"])["BTCUSDT"].to_dataset().load() for x in (a, b, c))
    xr.testing.assert_identical(ba.drop_attrs(), bb.drop_attrs())
    assert not np.array_equal(ba.bid_price.values, bc.bid_price.values)
    pa, pb = (store.open_positions(x["positions"]).load() for x in (a, b))
    xr.testing.assert_identical(pa.drop_attrs(), pb.drop_attrs())


def test_rerun_completes_an_interrupted_synth_identically(tmp_path):
    import zarr

    cfg = SynthConfig(out=str(tmp_path / "s"), days=2, instruments=1, accounts=300, levels=3,
                      snapshots_per_day=1500, book_chunk_rows=512, account_chunk_rows=128)
    first = synth(cfg)
    reference = store.open_book(first["book"])["BTCUSDT"].to_dataset().load()
    day2 = f"BTCUSDT/{first['days'][1]}"
    node = zarr.open_group(first["book"], path=day2, mode="r+")
    node["bid_price"][:10] = 0.0  # a killed writer left garbage and no completion mark
    node.attrs[store.COMPLETE] = False
    synth(cfg)
    again = store.open_book(first["book"])["BTCUSDT"].to_dataset().load()
    xr.testing.assert_identical(reference.drop_attrs(), again.drop_attrs())


def test_books_look_like_markets(tiny_dataset):
    book = store.open_book(tiny_dataset["book"])
    autocorr = []
    for name in book.children:
        ds = book[name].to_dataset().load()
        # depth grows away from the touch
        mean_depth = ds.bid_size.mean("time").values + ds.ask_size.mean("time").values
        assert np.all(np.diff(mean_depth) > 0)
        # prices on the tick grid
        tick = book[name].to_dataset().attrs.get("tick_size") or store.open_day_dataset(
            tiny_dataset["book"], f"{name}/{tiny_dataset['days'][0]}").attrs["tick_size"]
        ticks = ds.bid_price.values[:, 0] / tick
        np.testing.assert_allclose(ticks, np.round(ticks), atol=1e-6)
        # volatility clusters: absolute 5-minute returns are autocorrelated
        mid = pd.Series(((ds.bid_price[:, 0] + ds.ask_price[:, 0]) / 2).values, index=ds.time.values)
        r = np.log(mid.resample("5min").last().dropna()).diff().dropna()
        autocorr.append(r.abs().autocorr(1))
        # persistent imbalance regimes: level-1 queue imbalance is autocorrelated
        qi = (ds.bid_size[:, 0] - ds.ask_size[:, 0]) / (ds.bid_size[:, 0] + ds.ask_size[:, 0])
        assert pd.Series(qi.values).autocorr(10) > 0.1
        # some timestamps repeat (millisecond clock), times never go back
        t = ds.time.values
        assert (np.diff(t) >= np.timedelta64(0)).all()
    assert np.mean(autocorr) > 0.1


def test_accounts_cover_the_account_model(tiny_dataset):
    market = store.open_market(tiny_dataset["market"], tiny_dataset["days"][0])
    pos = store.open_positions(tiny_dataset["positions"], tiny_dataset["days"][0]).load()
    kind = pd.Series(market.kind.values, index=market.instrument.values)
    held = (pos.position != 0).sum("account").to_series()
    assert held[kind[kind == "option"].index].sum() > 0
    assert held[kind[kind == "inverse"].index].sum() > 0
    assert (pos.balance < 0).any("asset").sum() > 0  # borrowers
    assert (pos.margin_mode == "isolated").sum() > 0
    iso = pos.margin_mode == "isolated"
    assert float(pos.isolated_margin.where(~iso, 0).sum()) == 0  # only isolated accounts
    # long skew: more long than short notional on the crowded altcoin
    q = pos.position.sel(instrument="SOLUSDT")
    assert float(q.clip(min=0).sum()) > 1.2 * float((-q).clip(min=0).sum())
    # a realistic leverage distribution: median of notional/equity for perp traders in [2, 20]
    perp = pos.position.sel(instrument=kind[kind == "linear"].index)
    notional = (abs(perp) * market.mark_price.sel(instrument=perp.instrument)).sum("instrument")
    equity = pos.balance.sel(asset="USDT")
    lev = (notional / equity).where((notional > 0) & (pos.margin_mode == "cross") & (equity > 0))
    assert 2 <= float(lev.median()) <= 20
