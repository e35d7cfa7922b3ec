"""Round trips of every write path, and the day-completeness rules."""

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import MARKET_SPEC, make_book, make_positions

from gpu_risk import store
from gpu_risk.errors import InputError, SchemaError
from gpu_risk.schema import as_str

BOOK_VARS = ["bid_price", "ask_price", "bid_size", "ask_size"]


def test_write_book_splits_days_and_round_trips(tmp_path):
    ds = make_book(n=400, start="2026-01-05T23:00")  # spans midnight
    days = store.write_book(ds, tmp_path / "b.zarr", "BTCUSDT", chunk_rows=64)
    expected_days = sorted({str(d) for d in ds.time.values.astype("datetime64[D]")})
    assert days == expected_days and len(days) == 2
    back = store.open_book(tmp_path / "b.zarr")["BTCUSDT"].to_dataset().load()
    for name in BOOK_VARS:
        np.testing.assert_array_equal(back[name].values, ds[name].values)
    np.testing.assert_array_equal(back.time.values, ds.time.values)
    assert back.bid_price.attrs["units"] and back.bid_price.attrs["long_name"]


def test_open_book_date_range_and_instruments(tmp_path):
    path = tmp_path / "b.zarr"
    a = make_book(n=300, start="2026-01-05T12:00", seed=1)
    b = make_book(n=300, start="2026-01-06T12:00", seed=2)
    store.write_book(xr.concat([a, b], "time"), path, "A")
    store.write_book(b, path, "B")
    tree = store.open_book(path, start="2026-01-06", end="2026-01-06")
    assert sorted(tree.children) == ["A", "B"]
    np.testing.assert_array_equal(tree["A"].to_dataset().time.values, b.time.values)
    only_b = store.open_book(path, ["B"])
    assert list(only_b.children) == ["B"]
    with pytest.raises(InputError, match="instrument not in the book store"):
        store.open_book(path, ["C"])


def test_region_writer_round_trip_and_incomplete_until_closed(tmp_path):
    path = tmp_path / "b.zarr"
    ds = make_book(n=1000, levels=3, start="2026-01-05T01:00")
    writer = store.book_writer(path, "X", "2026-01-05", ds.time.values, 3, chunk_rows=128)
    for start in range(0, 1000, 128):
        writer.write(start, ds.isel(time=slice(start, start + 128)))
        assert not store.is_complete(path, "X/2026-01-05")
    assert store.book_days(path) == {"X": []}  # not visible before close
    writer.close()
    back = store.open_book_instrument(path, "X").load()
    for name in BOOK_VARS:
        np.testing.assert_array_equal(back[name].values, ds[name].values)
    with pytest.raises(ValueError, match="not aligned"):
        writer.write(5, ds.isel(time=slice(5, 10)))


def test_incomplete_day_is_invisible_and_overwritten(tmp_path):
    path = tmp_path / "b.zarr"
    ds = make_book(n=100, start="2026-01-05T01:00")
    store.write_book(ds, path, "X")
    zarr.open_group(str(path), path="X/2026-01-05", mode="r+").attrs[store.COMPLETE] = False
    with pytest.raises(InputError, match="no complete day"):
        store.open_book(path)
    store.write_book(ds, path, "X")
    assert store.book_days(path) == {"X": ["2026-01-05"]}


def test_positions_round_trip_both_write_paths(tmp_path, market):
    pos = make_positions(n=37)
    store.write_positions(pos, tmp_path / "p.zarr", "2026-01-05", chunk_rows=8)
    writer = store.positions_writer(tmp_path / "p.zarr", "2026-01-06", pos.account.values,
                                    list(pos.asset.values), list(pos.instrument.values), chunk_rows=16)
    for start in range(0, 37, 16):
        writer.write(start, pos.isel(account=slice(start, start + 16)))
    writer.close()
    assert store.positions_dates(tmp_path / "p.zarr") == ["2026-01-05", "2026-01-06"]
    for date in ("2026-01-05", "2026-01-06"):
        back = store.open_positions(tmp_path / "p.zarr", date, market=market).load()
        for name in ("balance", "position", "entry_price", "isolated_margin"):
            np.testing.assert_array_equal(back[name].values, pos[name].values)
        assert list(as_str(back.margin_mode.values)) == list(pos.margin_mode.values)
        assert list(back.instrument.values) == list(pos.instrument.values)
    latest = store.open_positions(tmp_path / "p.zarr")
    assert latest.attrs["date"] == "2026-01-06"


def test_margin_mode_stored_as_flag_codes_and_string_stores_still_read(tmp_path, market):
    """margin_mode goes to disk as CF flag codes (uint8) and comes back as the same strings;
    a store whose margin_mode holds strings (another tool's) reads the same; a mode that is
    neither cross nor isolated, written by the slab writer (which does not validate), comes
    back flagged, never as a valid mode."""
    pos = make_positions(n=40)
    store.write_positions(pos, tmp_path / "p.zarr", "2026-01-05", chunk_rows=16)
    raw = zarr.open_group(str(tmp_path / "p.zarr"), path="2026-01-05", mode="r")["margin_mode"]
    assert raw.dtype == np.uint8 and raw.attrs["flag_meanings"] == "cross isolated"
    np.testing.assert_array_equal(raw[:], np.where(pos.margin_mode.values == "isolated", 1, 0))
    back = store.open_positions(tmp_path / "p.zarr", market=market).compute()
    assert back.margin_mode.dtype.kind == "U" and "flag_meanings" not in back.margin_mode.attrs
    assert list(back.margin_mode.values) == list(pos.margin_mode.values)
    # strings on disk (written directly, as another tool would)
    other = store._with_attrs(pos, store.POSITION_VARS)
    other.attrs["date"] = "2026-01-06"
    store.init_store(tmp_path / "p.zarr", "positions")
    store.write_day_dataset(other, tmp_path / "p.zarr", "2026-01-06", {"account": 16})
    raw = zarr.open_group(str(tmp_path / "p.zarr"), path="2026-01-06", mode="r")["margin_mode"]
    assert raw.dtype.kind != "u"
    strings = store.open_positions(tmp_path / "p.zarr", "2026-01-06", market=market).compute()
    assert list(as_str(strings.margin_mode.values)) == list(pos.margin_mode.values)
    # an unknown mode through the slab writer: decoded to "", flagged or refused on opening
    bad = pos.copy()
    modes = bad.margin_mode.values.copy()
    modes[7] = "portfolio"
    bad["margin_mode"] = ("account", modes)
    writer = store.positions_writer(tmp_path / "p.zarr", "2026-01-07", pos.account.values,
                                    list(pos.asset.values), list(pos.instrument.values), chunk_rows=16)
    for start in range(0, 40, 16):
        writer.write(start, bad.isel(account=slice(start, start + 16)))
    writer.close()
    with pytest.raises(InputError, match="neither 'cross' nor 'isolated'"):
        store.open_positions(tmp_path / "p.zarr", "2026-01-07", market=market)
    flagged = store.open_positions(tmp_path / "p.zarr", "2026-01-07", market=market, on_bad_rows="flag").compute()
    assert np.flatnonzero(flagged.qc_bad_margin_mode.values).tolist() == [7]


def test_market_round_trip_zarr_yaml_toml(tmp_path, market):
    import yaml

    store.write_market(market, tmp_path / "m.zarr", "2026-01-05")
    from_zarr = store.open_market(tmp_path / "m.zarr")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(MARKET_SPEC))
    from_yaml = store.open_market(tmp_path / "m.yaml")
    toml = """date = "2026-01-05"
[assets.USDT]
price = 1.0
haircut = 0.0
beta = 0.0
[assets.BTC]
price = 50000.0
haircut = 0.05
[instruments.BTCUSDT]
kind = "linear"
underlying = "BTC"
mark_price = 50000.0
brackets = [[0, 0.004, 0], [50000, 0.005, 50]]
"""
    (tmp_path / "m.toml").write_text(toml)
    from_toml = store.open_market(tmp_path / "m.toml")
    for got in (from_zarr, from_yaml.sel(asset=market.asset, instrument=market.instrument)):
        for name in ("price", "haircut", "beta", "mark_price", "strike", "implied_vol",
                     "notional_floor", "mmr", "maintenance_amount", "expiry"):
            np.testing.assert_array_equal(got[name].values, market[name].values)
        for name in ("kind", "underlying", "call_put"):
            assert list(got[name].values) == list(market[name].values)
    assert from_toml.beta.sel(asset="BTC") == 1.0  # default beta
    assert list(from_toml.mmr.sel(instrument="BTCUSDT").values) == [0.004, 0.005]


def test_results_day_round_trip_and_visibility(tmp_path):
    a = xr.Dataset({"x": ("i", np.arange(3.0), {"units": "1", "long_name": "x"})}, coords={"i": [1, 2, 3]})
    store.write_results_day(tmp_path / "r.zarr", "2026-01-05", {"fam": a})
    xr.testing.assert_identical(store.open_results(tmp_path / "r.zarr")["2026-01-05/fam"].to_dataset(), a)
    zarr.open_group(str(tmp_path / "r.zarr"), path="2026-01-05", mode="r+").attrs[store.COMPLETE] = False
    assert store.results_days(tmp_path / "r.zarr") == []


def test_store_kind_mismatch_is_a_clear_error(tmp_path):
    store.write_book(make_book(), tmp_path / "b.zarr", "X")
    with pytest.raises(SchemaError, match="is a book store, not a positions store"):
        store.open_positions(tmp_path / "b.zarr")
    with pytest.raises(FileNotFoundError):
        store.open_book(tmp_path / "missing.zarr")
