"""Exact int32 ticks for book prices and sizes: every value comes back bit for bit, or the
array stays float64; stores read the same through gpu_risk and through plain xarray."""

import numpy as np
import pytest
import xarray as xr
from conftest import make_book
from gpu_risk.kernels.ticks import TICK_FILL
from hypothesis import given
from hypothesis import strategies as st

from gpu_risk import coding, store


def _same_bits(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


@given(ticks=st.lists(st.integers(-10**8, 10**8), min_size=1, max_size=200),
       decimals=st.integers(0, 8), empty=st.integers(0, 5))
def test_decimal_data_round_trips_exactly(ticks, decimals, empty):
    """Prices as an importer parses them ("59958.4" -> float): a decimal divisor is exact."""
    values = np.array([float(f"{t / 10**decimals:.{decimals}f}") for t in ticks])
    values[:empty] = np.nan  # empty levels
    spec, encoded = coding.choose(values)
    assert encoded.dtype == np.int32 and (encoded[:min(empty, values.size)] == TICK_FILL).all()
    decoded = coding._decode_block(encoded, *spec)
    assert _same_bits(decoded, values)


@given(ticks=st.lists(st.integers(0, 10**7), min_size=1, max_size=200),
       tick=st.sampled_from([0.1, 0.01, 0.5, 0.015, 0.45, 1e-4, 0.25, 3e-5]))
def test_tick_multiples_round_trip_exactly(ticks, tick):
    """Values made as ticks x tick size (as the synthetic books are)."""
    values = np.array(ticks, dtype=np.float64) * tick
    spec, encoded = coding.choose(values, hint=tick)
    assert _same_bits(coding._decode_block(encoded, *spec), values)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, -0.0, 1e12, 0.1 + 0.2, np.pi])
def test_values_off_every_grid_stay_float(bad):
    values = np.array([100.5, 100.25, bad, 99.75])
    found = coding.choose(values)
    if found is not None:  # an exact encoding of all four values is fine too
        assert _same_bits(coding._decode_block(found[1], *found[0]), values)
    else:
        ds = xr.Dataset({"bid_price": (("time", "level"), values[:, None])})
        out, encoded = coding.encode_ticked(ds)
        assert not encoded and out["bid_price"].dtype == np.float64


def test_writer_refuses_a_value_off_its_declared_grid(tmp_path):
    ds = make_book(n=16, tick=0.5)
    writer = store.book_writer(tmp_path / "b.zarr", "X", ds.time.values[0], ds.time.values, 5,
                               chunk_rows=16, ticks={"bid_price": (0.0, 0.5)})
    bad = ds.copy(deep=True)
    bad["bid_price"].values[3, 2] += 0.1
    with pytest.raises(ValueError, match="bid_price of X .* not exact in ticks"):
        writer.write(0, bad)
    writer.write(0, ds)
    writer.close()
    back = store.open_book_instrument(tmp_path / "b.zarr", "X")
    assert _same_bits(back.bid_price.values, ds.bid_price.values)


def test_store_reads_the_same_through_plain_xarray(tmp_path):
    """gpu_risk decodes exactly; a CF reader (plain xarray) gets the same values back here
    (multiplier encodings decode as CF does, bit for bit)."""
    ds = make_book(n=300, tick=0.5)
    ds["bid_price"].values[5, -1] = np.nan
    ds["bid_size"].values[5, -1] = 0.0
    store.write_book(ds, tmp_path / "b.zarr", "X")
    mine = store.open_book_instrument(tmp_path / "b.zarr", "X")
    plain = xr.open_zarr(tmp_path / "b.zarr", group="X/2026-01-05", zarr_format=3, consolidated=False)
    for name in coding.TICKED_VARS:
        assert _same_bits(mine[name].values, ds[name].values), name
        np.testing.assert_allclose(plain[name].values, ds[name].values, rtol=1e-15)
    raw = store.zarr.open_array(str(tmp_path / "b.zarr"), path="X/2026-01-05/bid_price")
    assert raw.dtype == np.int32 and "scale_factor" in raw.attrs


def test_a_missing_ticked_chunk_reads_as_empty_levels(tmp_path):
    """A deleted chunk of ticks reads as the fill value: NaN prices, which validation flags
    (never a silent zero price)."""
    import shutil

    from gpu_risk.errors import InputError

    store.write_book(make_book(n=40), tmp_path / "b.zarr", "X", chunk_rows=16)
    shutil.rmtree(tmp_path / "b.zarr" / "X" / "2026-01-05" / "bid_size" / "c" / "1")
    with pytest.raises(InputError):
        store.open_book_instrument(tmp_path / "b.zarr", "X", trust_recorded=False)


def test_real_imports_are_stored_as_exact_ticks(tmp_path):
    """LOBSTER (dollars x 10000) and Binance (decimal strings) books become ticks, and read
    back equal to the floats the importer produced."""
    from pathlib import Path

    from gpu_risk.importers.lobster import import_lobster

    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "lobster_aapl_2012-06-21"
    folder = real / "yilezheng_998rows_level10"
    if not folder.exists():
        pytest.skip("real LOBSTER sample not present")
    book = folder / "AAPL_2012-06-21_34200000_57600000_orderbook_10.csv"
    msg = folder / "AAPL_2012-06-21_34200000_57600000_message_10.csv"
    import_lobster(book, msg, date="2012-06-21", instrument="AAPL", out=tmp_path / "b.zarr")
    raw = store.zarr.open_array(str(tmp_path / "b.zarr"), path="AAPL/2012-06-21/bid_price")
    assert raw.dtype == np.int32
    lobster = np.loadtxt(book, delimiter=",")
    opened = store.open_book_instrument(tmp_path / "b.zarr", "AAPL", validate=False)
    bid = lobster[:, 2::4] / 10_000.0
    bid[lobster[:, 2::4] == -9999999999] = np.nan
    assert _same_bits(opened.bid_price.values, bid)


@given(st.lists(st.tuples(st.integers(1, 400), st.sampled_from([0, 1, 2, 3, 6]),
                          st.sampled_from([None, 0.25, 0.1, 7e-5, 1 / 3])), min_size=1, max_size=5),
       st.integers(0, 2**32 - 1))
def test_choose_spec_is_what_the_chooser_chooses(pieces, seed):
    """The importers' one-winner search gives the spec the chooser fed every piece gives:
    pieces of decimal data with different numbers of decimals, tick multiples, values off
    every grid and empty levels."""
    rng = np.random.default_rng(seed)
    arrays = []
    for n, decimals, tick in pieces:
        if tick is None:
            values = rng.integers(1, 10**7, size=(n, 3)) / 10.0**decimals
        else:
            values = rng.integers(1, 10**6, size=(n, 3)) * tick
        values[rng.random(values.shape) < 0.1] = np.nan
        arrays.append(values)
    chooser = coding.TickChooser()
    for values in arrays:
        chooser.feed(values)
    assert coding.choose_spec(lambda: iter(arrays)) == chooser.spec
