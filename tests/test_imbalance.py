"""Imbalance grids (SPEC section 1) against an independent loop reference; invariance
under re-chunking, schedulers and days; CuPy against numba where a GPU exists."""

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import make_book
from hypothesis import given
from hypothesis import strategies as st
from imbalance_reference import reference_grid

from gpu_risk import store
from gpu_risk.imbalance import imbalance_grid
from gpu_risk.validate import validate_book_dataset

VARS = ["ofi", "depth_imbalance", "mid_price", "spread", "microprice", "band_imbalance", "n_updates"]


def awkward_book(seed, n=120, levels=4, start="2026-01-05T09:00:00", span_s=40.0, tick=0.5):
    """Random valid books with empty (NaN) tail levels, zero sizes, repeated timestamps,
    empty buckets (bursty times) and price moves of several ticks at every level."""
    rng = np.random.default_rng(seed)
    mid = 100 + np.cumsum(rng.integers(-3, 4, size=n))
    gaps = rng.integers(1, 3, size=(n, levels)).cumsum(axis=1)
    bid = (mid[:, None] - gaps) * tick
    ask = (mid[:, None] + rng.integers(1, 3, size=(n, levels)).cumsum(axis=1)) * tick
    bid_size = rng.choice([0.0, 0.5, 1.0, 2.5, 7.0], size=(n, levels))
    ask_size = rng.choice([0.0, 0.5, 1.0, 2.5, 7.0], size=(n, levels))
    for side_p, side_q in ((bid, bid_size), (ask, ask_size)):
        depth = rng.integers(0, levels + 1, size=n)  # number of filled levels (0 = empty side)
        depth[rng.random(n) < 0.8] = levels
        for r in range(n):
            side_p[r, depth[r]:] = np.nan
            side_q[r, depth[r]:] = 0.0
    seconds = np.sort(np.concatenate([rng.uniform(0, span_s * 0.3, n // 2),
                                      rng.uniform(span_s * 0.6, span_s, n - n // 2)]))
    seconds[rng.random(n) < 0.15] = np.floor(seconds[rng.random(n) < 0.15].mean())  # repeats
    seconds = np.sort(np.round(seconds, 3))
    time = np.datetime64(start, "ns") + (seconds * 1e9).astype("timedelta64[ns]")
    ds = xr.Dataset({"bid_price": (("time", "level"), bid), "ask_price": (("time", "level"), ask),
                     "bid_size": (("time", "level"), bid_size), "ask_size": (("time", "level"), ask_size)},
                    coords={"time": time, "level": np.arange(1, levels + 1)})
    validate_book_dataset(ds)  # the generator itself makes valid books only
    return ds


def assert_matches_reference(grid, books, bucket, **kw):
    ref, labels, names = reference_grid(books, bucket, **kw)
    grid = grid.compute()
    assert list(grid.instrument.values) == names
    np.testing.assert_array_equal(grid.time.values, labels)
    for name in VARS:
        np.testing.assert_array_equal(grid[name].values, ref[name], err_msg=name)


@pytest.mark.parametrize("bucket", ["1ms", "250ms", "1s", "7s", "1min"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_loop(seed, bucket):
    books = {"A": awkward_book(seed), "B": awkward_book(seed + 100, n=60, start="2026-01-05T09:00:20")}
    tree = xr.DataTree.from_dict({f"/{k}": v.chunk({"time": 13}) for k, v in books.items()})
    assert_matches_reference(imbalance_grid(tree, bucket=bucket), books, bucket)


def test_levels_and_bands_and_eager_input():
    book = awkward_book(5)
    grid = imbalance_grid(xr.DataTree.from_dict({"/A": book}), "1s", levels=2, bands_bps=(1, 30))
    assert not isinstance(grid.ofi.data, dask.array.Array)  # eager in, eager out
    assert grid.sizes["level"] == 2 and list(grid.band.values) == [1.0, 30.0]
    assert_matches_reference(grid, {"A": book}, "1s", levels=2, bands_bps=(1, 30))
    with pytest.raises(ValueError, match="levels must be in"):
        imbalance_grid(xr.DataTree.from_dict({"/A": book}), "1s", levels=9)
    with pytest.raises(ValueError, match="positive duration"):
        imbalance_grid(xr.DataTree.from_dict({"/A": book}), "0s")


def test_units_and_long_names():
    grid = imbalance_grid(xr.DataTree.from_dict({"/A": awkward_book(3)}), "1s")
    for name in VARS:
        assert grid[name].attrs["units"] and grid[name].attrs["long_name"]
    assert grid.ofi.dims == ("instrument", "time", "level")
    assert grid.band_imbalance.dims == ("instrument", "time", "band")


@given(seed=st.integers(0, 10_000), chunks=st.lists(st.integers(1, 40), min_size=1, max_size=30),
       bucket=st.sampled_from(["1ms", "100ms", "1s", "3s"]),
       scheduler=st.sampled_from(["sync", "threads"]))
def test_any_rechunking_and_scheduler_gives_identical_output(seed, chunks, bucket, scheduler):
    book = awkward_book(seed, n=90)
    sizes = []
    while sum(sizes) < 90:
        sizes.append(chunks[len(sizes) % len(chunks)])
    sizes[-1] -= sum(sizes) - 90
    sizes = tuple(s for s in sizes if s > 0)
    whole = imbalance_grid(xr.DataTree.from_dict({"/A": book.chunk({"time": -1})}), bucket)
    with dask.config.set(scheduler=scheduler):
        pieces = imbalance_grid(xr.DataTree.from_dict({"/A": book.chunk({"time": sizes})}), bucket).compute()
    xr.testing.assert_identical(whole.compute(), pieces)
    assert_matches_reference(pieces, {"A": book}, bucket)


def test_across_days_in_a_store_and_day_by_day(tmp_path):
    """Predecessor across the day boundary; gridding day 2 alone with `start` and the
    previous day's last snapshot gives exactly the whole history's day-2 buckets."""
    book = awkward_book(11, n=200, start="2026-01-05T23:59:30", span_s=60.0)
    store.write_book(book, tmp_path / "b.zarr", "A", chunk_rows=16)
    tree = store.open_book(tmp_path / "b.zarr")
    whole = imbalance_grid(tree, "1s")
    assert_matches_reference(whole, {"A": book}, "1s")
    day2 = store.open_book(tmp_path / "b.zarr", start="2026-01-06", end="2026-01-06")["A"].to_dataset()
    last_of_day1 = store.open_book(tmp_path / "b.zarr", end="2026-01-05")["A"].to_dataset().isel(time=[-1])
    lead = xr.concat([last_of_day1, day2], "time")
    part = imbalance_grid(xr.DataTree.from_dict({"/A": lead}), "1s", start="2026-01-06").compute()
    expected = whole.compute().sel(time=slice(np.datetime64("2026-01-06T00:00:00.000000001"), None))
    xr.testing.assert_identical(part.drop_attrs(), expected.drop_attrs())
    # day 1 gridded up to midnight tiles with day 2: together they are the whole grid
    day1 = store.open_book(tmp_path / "b.zarr", end="2026-01-05")["A"].to_dataset()
    first = imbalance_grid(xr.DataTree.from_dict({"/A": day1}), "1s", end="2026-01-06").compute()
    assert first.time.values[-1] == np.datetime64("2026-01-06T00:00:00", "ns")
    xr.testing.assert_identical(xr.concat([first, part], "time").drop_attrs(),
                                whole.compute().drop_attrs())


def test_flagged_rows_are_left_out():
    book = awkward_book(21).copy(deep=True)
    book.bid_size.values[[10, 40], 0] = -1.0
    flagged = validate_book_dataset(book, on_bad_rows="flag")
    grid = imbalance_grid(xr.DataTree.from_dict({"/A": flagged.chunk({"time": 9})}), "1s")
    kept = book.isel(time=np.flatnonzero(~flagged.qc_row_excluded.values))
    assert_matches_reference(grid, {"A": kept}, "1s")


def test_real_lobster_sample_matches_reference():
    """The first 999 rows of LOBSTER's AAPL level-10 sample (10 levels, real queue dynamics)."""
    root = Path(__file__).resolve().parents[2] / "shared/data/real/lobster_aapl_2012-06-21/yilezheng_998rows_level10"
    ob = next(root.glob("*orderbook_10.csv"), None) if root.exists() else None
    msg = next(root.glob("*message_10.csv"), None) if root.exists() else None
    if ob is None or msg is None:
        pytest.skip("shared LOBSTER sample not present")
    import pandas as pd

    book_rows = pd.read_csv(ob, header=None).values.astype(float)
    seconds = pd.read_csv(msg, header=None)[0].values.astype(float)
    ask_p, ask_q, bid_p, bid_q = (book_rows[:, j::4] for j in range(4))
    ask_p = np.where(ask_p >= 9999999999, np.nan, ask_p / 1e4)
    bid_p = np.where(bid_p <= -9999999999, np.nan, bid_p / 1e4)
    time = np.datetime64("2012-06-21T13:30", "ns") + (seconds * 1e9).round().astype("timedelta64[ns]")
    ds = xr.Dataset({"bid_price": (("time", "level"), bid_p), "ask_price": (("time", "level"), ask_p),
                     "bid_size": (("time", "level"), bid_q), "ask_size": (("time", "level"), ask_q)},
                    coords={"time": time, "level": np.arange(1, 11)})
    validate_book_dataset(ds)
    grid = imbalance_grid(xr.DataTree.from_dict({"/AAPL": ds.chunk({"time": 100})}), "1s")
    assert_matches_reference(grid, {"AAPL": ds}, "1s")
    assert int(grid.n_updates.sum()) == ds.sizes["time"]


# ------------------------------------------------------------------------- GPU


@pytest.mark.cupy
@pytest.mark.parametrize("bucket", ["1ms", "1s", "7s"])
def test_gpu_matches_cpu(bucket):
    from gpu_risk.backend import gpu_available, to_backend

    ok, why = gpu_available()
    if not ok:
        pytest.skip(why)
    books = {"A": awkward_book(1), "B": awkward_book(2, n=80)}
    cpu = imbalance_grid(xr.DataTree.from_dict({f"/{k}": v.chunk({"time": 11}) for k, v in books.items()}), bucket)
    gpu_tree = xr.DataTree.from_dict({f"/{k}": to_backend(v.chunk({"time": 11}), "gpu") for k, v in books.items()})
    gpu = imbalance_grid(gpu_tree, bucket)
    assert type(gpu.ofi.data._meta).__module__.startswith("cupy")  # stays on the device
    gpu = gpu.compute()
    cpu = cpu.compute()
    for name in VARS:
        g = gpu[name].data.get()
        np.testing.assert_allclose(g, cpu[name].values, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)


def test_arrays_chunked_differently_give_the_same_grid():
    """Blocks are read from the input chunks in place: the four book arrays may come with
    different time chunks (and a chunked level axis), and the grid is still identical."""
    book = make_book(n=200, levels=5)
    reference = imbalance_grid(book, "1min")
    mixed = book.copy()
    for name, chunks in (("bid_price", {"time": 7}), ("ask_size", {"time": 13, "level": 2}),
                         ("bid_size", {"time": 50}), ("ask_price", {"time": 200})):
        mixed[name] = book[name].chunk(chunks)
    got = imbalance_grid(mixed, "1min").compute()
    for name in reference.data_vars:
        np.testing.assert_array_equal(got[name].values, reference[name].values, err_msg=name)


@given(times=st.lists(st.integers(-10**12, 10**12), min_size=1, max_size=300), sort=st.booleans(),
       origin=st.integers(-10**11, 10**11), bucket=st.integers(1, 10**11))
def test_bucket_of_matches_floor_division(times, sort, origin, bucket):
    """The one-pass bucket index (divides only when a row leaves the current bucket) equals
    max((t - origin) // bucket, 0) row by row, sorted or not."""
    from gpu_risk.kernels.imbalance import bucket_of_cpu

    t = np.array(sorted(times) if sort else times, dtype=np.int64)
    got = bucket_of_cpu(t, origin, bucket, np.empty(t.size, dtype=np.int64))
    np.testing.assert_array_equal(got, np.maximum((t - origin) // bucket, 0))


def _with_gap(book: xr.Dataset, after: int, minutes: float) -> xr.Dataset:
    """``book`` with every snapshot after row ``after`` moved ``minutes`` later."""
    t = book.time.values.copy()
    t[after + 1:] = t[after + 1:] + np.timedelta64(int(minutes * 60e9), "ns")
    return book.assign_coords(time=t)


@pytest.mark.parametrize("max_carry", ["5min", "90s", None])
@pytest.mark.parametrize("chunks", [None, 17])
def test_a_gap_longer_than_max_carry_is_nan_not_a_stale_book(max_carry, chunks):
    """SPEC section 1: empty buckets carry the last snapshot's state only up to max_carry;
    beyond, state is NaN (OFI and n_updates 0), in memory and lazily, as the reference says."""
    books = {"A": _with_gap(awkward_book(21, n=150, span_s=120.0), 70, 12),
             "B": _with_gap(awkward_book(22, n=90, span_s=100.0, start="2026-01-05T09:00:30"), 20, 3)}
    tree = xr.DataTree.from_dict({f"/{k}": (v.chunk({"time": chunks}) if chunks else v) for k, v in books.items()})
    grid = imbalance_grid(tree, "10s", max_carry=max_carry).compute()
    assert_matches_reference(grid, books, "10s", max_carry=max_carry)
    a = grid.sel(instrument="A")
    forever = imbalance_grid(tree, "10s", max_carry=None).compute().sel(instrument="A")
    masked = np.isnan(a.mid_price.values) & ~np.isnan(forever.mid_price.values)
    if max_carry is None:
        assert not masked.any()
    else:
        # the 12-minute gap: its buckets ending more than max_carry after the last snapshot
        limit = pd.Timedelta(max_carry).total_seconds()
        assert int(masked.sum()) in (int((12 * 60 - limit) // 10), int((12 * 60 - limit) // 10) + 1)
        assert (a.n_updates.values[masked] == 0).all() and (a.ofi.values[masked] == 0).all()
        assert np.isnan(a.band_imbalance.values[masked]).all() and np.isnan(a.depth_imbalance.values[masked]).all()
    assert grid.attrs["max_carry"] == ("none" if max_carry is None else pd.Timedelta(max_carry).isoformat())


def test_gaps_across_midnight_tile_day_by_day(tmp_path):
    """A gap spanning midnight: day 2 gridded alone (with day 1's last snapshot) equals the
    whole history's day-2 buckets, stale buckets included."""
    book = _with_gap(awkward_book(31, n=200, start="2026-01-05T23:55:00", span_s=60.0), 120, 9)
    store.write_book(book, tmp_path / "b.zarr", "A", chunk_rows=16)
    whole = imbalance_grid(store.open_book(tmp_path / "b.zarr"), "1s").compute()
    assert_matches_reference(whole, {"A": book}, "1s")
    assert np.isnan(whole.mid_price.values).sum() > 0
    day2 = store.open_book(tmp_path / "b.zarr", start="2026-01-06", end="2026-01-06")["A"].to_dataset()
    last_of_day1 = store.open_book(tmp_path / "b.zarr", end="2026-01-05")["A"].to_dataset().isel(time=[-1])
    part = imbalance_grid(xr.DataTree.from_dict({"/A": xr.concat([last_of_day1, day2], "time")}), "1s",
                          start="2026-01-06").compute()
    expected = whole.sel(time=slice(np.datetime64("2026-01-06T00:00:00.000000001"), None))
    xr.testing.assert_identical(part.drop_attrs(), expected.drop_attrs())
