"""Every bad-input case of SPEC: a clear error (store, variable, instrument, first index)
or, under on_bad_rows="flag", a qc_* flag marking exactly the bad rows."""

import numpy as np
import pytest
import xarray as xr
from conftest import make_book, make_positions

from gpu_risk import store
from gpu_risk.errors import InputError, SchemaError
from gpu_risk.validate import validate_book_dataset, validate_market, validate_positions

BAD_ROWS = [7, 12]


def _set(ds, name, row, level, value):
    ds[name].values[row, level] = value


def crossed(ds, r):
    _set(ds, "bid_price", r, 0, ds.ask_price.values[r, 0])


def nan_size(ds, r):
    _set(ds, "bid_size", r, 2, np.nan)


def negative_size(ds, r):
    _set(ds, "ask_size", r, 1, -0.5)


def size_at_empty_level(ds, r):
    _set(ds, "bid_price", r, -1, np.nan)  # size left positive


def bid_ladder_flat(ds, r):
    _set(ds, "bid_price", r, 2, ds.bid_price.values[r, 1])


def ask_ladder_down(ds, r):
    _set(ds, "ask_price", r, 3, ds.ask_price.values[r, 2] - 0.25)


def ladder_gap(ds, r):
    _set(ds, "bid_price", r, 1, np.nan)
    _set(ds, "bid_size", r, 1, 0.0)


def zero_price(ds, r):
    _set(ds, "bid_price", r, -1, 0.0)


def infinite_price(ds, r):
    _set(ds, "ask_price", r, -1, np.inf)


def huge_size(ds, r):  # finite, but its sums overflow: NaN microprices, OFI of -1e308
    ds["bid_size"].values[r, :] = 1e308
    ds["ask_size"].values[r, :] = 1e308


def huge_price(ds, r):
    _set(ds, "ask_price", r, -1, 1e16)


BOOK_CASES = [
    (crossed, "qc_crossed", "bid_price/ask_price"),
    (nan_size, "qc_bad_size", "bid_size"),
    (negative_size, "qc_bad_size", "ask_size"),
    (size_at_empty_level, "qc_bad_size", "bid_size"),
    (bid_ladder_flat, "qc_ladder", "bid_price"),
    (ask_ladder_down, "qc_ladder", "ask_price"),
    (ladder_gap, "qc_ladder", "bid_price"),
    (zero_price, "qc_bad_price", "bid_price"),
    (infinite_price, "qc_bad_price", "ask_price"),
    (huge_size, "qc_bad_size", "bid_size"),
    (huge_price, "qc_bad_price", "ask_price"),
]


def _corrupt(mutate, rows=BAD_ROWS):
    ds = make_book(n=40, levels=5).copy(deep=True)
    for r in rows:
        mutate(ds, r)
    return ds


@pytest.mark.parametrize("mutate,rule,variable", BOOK_CASES, ids=[c[0].__name__ for c in BOOK_CASES])
def test_book_rule_raises_with_location(mutate, rule, variable):
    ds = _corrupt(mutate)
    with pytest.raises(InputError) as info:
        validate_book_dataset(ds, store="s.zarr", instrument="BTCUSDT")
    err = info.value
    assert (err.store, err.instrument, err.variable, err.index, err.count) == (
        "s.zarr", "BTCUSDT", variable, BAD_ROWS[0], len(BAD_ROWS))
    assert "s.zarr" in str(err) and "BTCUSDT" in str(err) and f"first bad index {BAD_ROWS[0]}" in str(err)


@pytest.mark.parametrize("mutate,rule,variable", BOOK_CASES, ids=[c[0].__name__ for c in BOOK_CASES])
def test_book_rule_flags_exactly_the_bad_rows(mutate, rule, variable):
    out = validate_book_dataset(_corrupt(mutate), on_bad_rows="flag")
    expected = np.zeros(40, bool)
    expected[BAD_ROWS] = True
    np.testing.assert_array_equal(out[rule].values, expected)
    np.testing.assert_array_equal(out["qc_row_excluded"].values, expected)
    assert out[rule].attrs["long_name"]


def test_unsorted_and_nat_times():
    ds = make_book(n=40)
    t = ds.time.values.copy()
    t[7] = t[6] - np.timedelta64(1, "s")
    t[12] = np.datetime64("NaT")
    ds = ds.assign_coords(time=t)
    with pytest.raises(InputError) as info:
        validate_book_dataset(ds, store="s", instrument="X")
    assert (info.value.variable, info.value.index, info.value.count) == ("time", 7, 2)
    out = validate_book_dataset(ds, on_bad_rows="flag")
    assert list(np.flatnonzero(out.qc_time_order.values)) == [7, 12]


def test_valid_book_gets_no_flags():
    out = validate_book_dataset(make_book(n=40), on_bad_rows="flag")
    assert not out.qc_row_excluded.values.any()


@pytest.mark.parametrize("breaker,match", [
    (lambda ds: ds.drop_vars("ask_size"), "missing variable 'ask_size'"),
    (lambda ds: ds.assign(bid_size=ds.bid_size.astype(np.int64)), "has dtype int64"),
    (lambda ds: ds.assign(ask_price=ds.ask_price.T), "has dims"),
    (lambda ds: ds.assign_coords(time=np.arange(ds.sizes["time"])), "variable 'time' has dtype"),
])
def test_book_structure_errors(breaker, match):
    with pytest.raises(SchemaError, match=match) as info:
        validate_book_dataset(breaker(make_book()), store="s", instrument="X")
    assert info.value.store == "s" and info.value.instrument == "X"


def test_bad_rows_found_through_the_store_across_days(tmp_path):
    """The index is the position in the instrument's whole (multi-day) time axis."""
    path = tmp_path / "b.zarr"
    day1 = make_book(n=30, start="2026-01-05T10:00", seed=3)
    day2 = make_book(n=30, start="2026-01-06T10:00", seed=4).copy(deep=True)
    negative_size(day2, 4)
    store.write_book(day1, path, "ETHUSDT")
    writer = store.book_writer(path, "ETHUSDT", "2026-01-06", day2.time.values, 5, chunk_rows=16)
    writer.write(0, day2.isel(time=slice(0, 16)))
    writer.write(16, day2.isel(time=slice(16, 30)))
    writer.close()  # written without validation, as importers stream
    with pytest.raises(InputError) as info:
        store.open_book(path)
    err = info.value
    assert (err.store, err.instrument, err.variable, err.index) == (str(path), "ETHUSDT", "ask_size", 34)
    flagged = store.open_book(path, on_bad_rows="flag")["ETHUSDT"].to_dataset()
    assert list(np.flatnonzero(flagged.qc_row_excluded.values)) == [34]


# ------------------------------------------------------------------ positions

ACCOUNTS = [3, 5]


def _unknown_instrument(ds):
    extra = xr.zeros_like(ds.position.isel(instrument=[0])).assign_coords(instrument=["ETHUSDT"])
    extra.values[ACCOUNTS, 0] = 1.0
    entry = (extra * 0 + 2000.0)
    return xr.Dataset({"balance": ds.balance,
                       "position": xr.concat([ds.position, extra], "instrument"),
                       "entry_price": xr.concat([ds.entry_price, entry], "instrument"),
                       "margin_mode": ds.margin_mode,
                       "isolated_margin": xr.concat([ds.isolated_margin, extra * 0], "instrument")})


def _unknown_asset(ds):
    extra = xr.zeros_like(ds.balance.isel(asset=[0])).assign_coords(asset=["SOL"])
    extra.values[ACCOUNTS, 0] = 10.0
    variables = {name: ds[name] for name in ds.data_vars if name != "balance"}
    return xr.Dataset(variables | {"balance": xr.concat([ds.balance, extra], "asset")})


def _values(name, fn):
    def mutate(ds):
        ds = ds.copy(deep=True)
        for a in ACCOUNTS:
            fn(ds[name].values, a, ds)
        return ds
    return mutate


def _open_btc(ds, a):
    ds.position.values[a, 0] = 1.0
    ds.entry_price.values[a, 0] = 50_000.0


def _nan_entry(values, a, ds):
    _open_btc(ds, a)
    values[a, 0] = np.nan


def _iso_on_cross(values, a, ds):
    ds.margin_mode.values[a] = "cross"
    values[a, 0] = 500.0


def _negative_iso(values, a, ds):
    ds.margin_mode.values[a] = "isolated"
    values[a, 0] = -5.0


def _bad_mode(values, a, ds):
    values[a] = "portfolio"


POSITION_CASES = [
    (_unknown_instrument, "qc_unknown_instrument", "position"),
    (_unknown_asset, "qc_unknown_asset", "balance"),
    (_values("balance", lambda v, a, ds: v.__setitem__((a, 1), np.nan)), "qc_nan_value", "balance"),
    (_values("position", lambda v, a, ds: v.__setitem__((a, 0), np.nan)), "qc_nan_value", "position"),
    (_values("balance", lambda v, a, ds: v.__setitem__((a, 1), -np.inf)), "qc_nan_value", "balance"),
    (_values("position", lambda v, a, ds: v.__setitem__((a, 0), np.inf)), "qc_nan_value", "position"),
    (_values("position", lambda v, a, ds: v.__setitem__((a, 0), 1e300)), "qc_nan_value", "position"),
    (_values("balance", lambda v, a, ds: v.__setitem__((a, 1), -2e30)), "qc_nan_value", "balance"),
    (_values("entry_price", _nan_entry), "qc_bad_entry_price", "entry_price"),
    (_values("margin_mode", _bad_mode), "qc_bad_margin_mode", "margin_mode"),
    (_values("isolated_margin", _iso_on_cross), "qc_isolated_margin_on_cross", "isolated_margin"),
    (_values("isolated_margin", _negative_iso), "qc_bad_isolated_margin", "isolated_margin"),
]
POSITION_IDS = ["unknown_instrument", "unknown_asset", "nan_balance", "nan_position", "inf_balance",
                "inf_position", "huge_position", "huge_balance", "nan_entry",
                "bad_mode", "iso_on_cross", "negative_iso"]


@pytest.mark.parametrize("mutate,rule,variable", POSITION_CASES, ids=POSITION_IDS)
def test_positions_rule_raises_and_flags(mutate, rule, variable, market):
    ds = mutate(make_positions(n=20))
    with pytest.raises(InputError) as info:
        validate_positions(ds, market, store="p.zarr")
    err = info.value
    assert err.store == "p.zarr" and err.variable == variable
    if rule in ("qc_unknown_instrument", "qc_unknown_asset"):
        assert err.instrument in ("ETHUSDT", "SOL")  # names the unknown label
    else:
        assert (err.index, err.count) == (ACCOUNTS[0], len(ACCOUNTS))
    out = validate_positions(ds, market, store="p.zarr", on_bad_rows="flag")
    assert list(np.flatnonzero(out[rule].values)) == ACCOUNTS
    assert list(np.flatnonzero(out["qc_row_excluded"].values)) == ACCOUNTS


def test_valid_positions_pass(market):
    out = validate_positions(make_positions(), market, on_bad_rows="flag")
    assert not out.qc_row_excluded.values.any()


def test_positions_structure_error(market):
    with pytest.raises(SchemaError, match="missing variable 'entry_price'"):
        validate_positions(make_positions().drop_vars("entry_price"), market, store="p")


# --------------------------------------------------------------------- market


def _market_case(fn):
    def mutate(m):
        m = m.copy(deep=True)
        fn(m)
        return m
    return mutate


MARKET_CASES = [
    (lambda m: m.price.values.__setitem__(1, np.nan), "price", "BTC", "asset price is NaN"),
    (lambda m: m.haircut.values.__setitem__(2, -0.1), "haircut", "ETH", r"haircut outside \[0, 1\]"),
    (lambda m: m.mark_price.values.__setitem__(0, np.nan), "mark_price", "BTCUSDT", "mark price is NaN"),
    (lambda m: m.mark_price.values.__setitem__(0, 1e300), "mark_price", "BTCUSDT", "above 1e15"),
    (lambda m: m.price.values.__setitem__(1, np.inf), "price", "BTC", "asset price is NaN, infinite"),
    (lambda m: m.notional_floor.values.__setitem__((0, 2), 10_000), "notional_floor", "BTCUSDT",
     "bracket floors not increasing"),
    (lambda m: m.notional_floor.values.__setitem__((0, 0), 5.0), "notional_floor", "BTCUSDT",
     "first bracket floor"),
    (lambda m: m.mmr.values.__setitem__((0, 1), np.nan), "mmr", "BTCUSDT", "mmr NaN"),
    (lambda m: m.strike.values.__setitem__(2, np.nan), "strike", "BTC-C-55000", "strike is NaN"),
    (lambda m: m.implied_vol.values.__setitem__(2, -1), "implied_vol", "BTC-C-55000", "implied_vol"),
]


@pytest.mark.parametrize("fn,variable,label,match", MARKET_CASES,
                         ids=[f"{c[1]}_{c[2]}_{i}" for i, c in enumerate(MARKET_CASES)])
def test_market_errors(fn, variable, label, match, market):
    bad = _market_case(fn)(market)
    with pytest.raises(InputError, match=match) as info:
        validate_market(bad, store="m.zarr")
    err = info.value
    assert err.store == "m.zarr" and err.variable == variable
    assert label in str(err)


def test_market_unknown_underlying_and_kind(market):
    m = market.copy(deep=True)
    m["underlying"] = m.underlying.copy(data=np.array(["BTC", "DOGE", "BTC"]))
    with pytest.raises(InputError, match="underlying asset 'DOGE'"):
        validate_market(m)
    m = market.copy(deep=True)
    m["kind"] = m.kind.copy(data=np.array(["linear", "quanto", "option"]))
    with pytest.raises(InputError, match="unknown instrument kind 'quanto'"):
        validate_market(m)


def test_positions_against_market_through_stores(tmp_path, market):
    ds = _unknown_instrument(make_positions())
    # the writer validates structure and rows but not the market: it is written, then caught on open
    store.write_positions(ds, tmp_path / "p.zarr", "2026-01-05")
    with pytest.raises(InputError, match="absent from the market") as info:
        store.open_positions(tmp_path / "p.zarr", market=market)
    assert info.value.store == str(tmp_path / "p.zarr") and info.value.instrument == "ETHUSDT"
