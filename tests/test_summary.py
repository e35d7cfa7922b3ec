"""The datasets' summary against independent pandas/NumPy computations."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import make_book, make_positions

from gpu_risk import store
from gpu_risk.summary import book_summary, positions_summary
from gpu_risk.validate import validate_book_dataset, validate_positions


def _pandas_book_summary(ds, exclude=None):
    bid, ask = ds.bid_price.values[:, 0], ds.ask_price.values[:, 0]
    df = pd.DataFrame({"mid": (bid + ask) / 2, "spread": (ask - bid) / ((bid + ask) / 2) * 1e4})
    if exclude is not None:
        df = df[~exclude]
    return {"n_snapshots": len(df), "open_mid": df.mid.iloc[0], "close_mid": df.mid.iloc[-1],
            "high_mid": df.mid.max(), "low_mid": df.mid.min(), "mean_spread_bps": df.spread.mean()}


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_book_summary_matches_pandas(tmp_path, chunk):
    a, b = make_book(n=300, seed=5), make_book(n=200, seed=6, start="2026-01-05T14:00")
    store.write_book(a, tmp_path / "b.zarr", "A", chunk_rows=chunk)
    store.write_book(b, tmp_path / "b.zarr", "B", chunk_rows=chunk)
    got = book_summary(store.open_book(tmp_path / "b.zarr"))
    for name, ds in (("A", a), ("B", b)):
        want = _pandas_book_summary(ds)
        for key, value in want.items():
            np.testing.assert_allclose(got[key].sel(instrument=name).item(), value, rtol=1e-12)
        assert got.first_time.sel(instrument=name).values == ds.time.values[0]


def test_book_summary_leaves_out_flagged_rows():
    ds = make_book(n=100, seed=8).copy(deep=True)
    ds.bid_price.values[0, 0] = ds.ask_price.values[0, 0] + 1  # crossed first row
    ds.ask_size.values[50, 2] = -1
    flagged = validate_book_dataset(ds, on_bad_rows="flag")
    tree = xr.DataTree.from_dict({"/X": flagged.chunk({"time": 16})})
    got = book_summary(tree)
    exclude = flagged.qc_row_excluded.values
    for key, value in _pandas_book_summary(ds, exclude).items():
        np.testing.assert_allclose(got[key].sel(instrument="X").item(), value, rtol=1e-12)


def test_positions_summary_matches_loop(market):
    pos = make_positions(n=200, seed=3)
    pos.margin_mode.values[5] = "bad"
    flagged = validate_positions(pos, market, on_bad_rows="flag").chunk({"account": 33})
    got = positions_summary(flagged, market)
    mark = dict(zip(market.instrument.values, market.mark_price.values))
    unit = {"BTCUSDT": mark["BTCUSDT"], "BTCUSD_PERP": 1.0, "BTC-C-55000": 50_000.0}
    for inst in pos.instrument.values:
        long = short = largest = 0.0
        for a in range(200):
            if a == 5:
                continue
            q = pos.position.sel(instrument=inst).values[a]
            long += max(q, 0) * unit[inst]
            short += max(-q, 0) * unit[inst]
            largest = max(largest, abs(q) * unit[inst])
        np.testing.assert_allclose(got.largest_account_notional.sel(instrument=inst), largest, rtol=1e-12)
        np.testing.assert_allclose(got.long_open_interest.sel(instrument=inst), long, rtol=1e-12)
        np.testing.assert_allclose(got.short_open_interest.sel(instrument=inst), short, rtol=1e-12)
        np.testing.assert_allclose(got.oi_imbalance.sel(instrument=inst), (long - short) / (long + short))
    assert int(got.n_excluded) == 1 and int(got.n_accounts) == 200
    assert int(got.n_isolated) == int((pos.margin_mode == "isolated").sum())
