"""The imbalance family straight from a book day's chunk files (``gpu_risk.imbalance_stored``,
the local schedulers' path): the grid the Dask graph computes, to the bit, for any chunking,
bucket and number of levels; the loop reference over the whole history; damaged chunks
named in one line."""

import json
import shutil
from unittest import mock

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imbalance_reference import reference_grid
from test_imbalance import VARS, awkward_book

from gpu_risk import builtin_families, imbalance_stored, store
from gpu_risk.errors import InputError
from gpu_risk.stores import ticked
from gpu_risk.workflow import WorkflowConfig, run_workflow


def books(seed: int, n: int) -> dict[str, xr.Dataset]:
    """Two instruments whose snapshots run across midnight (a lead-in row on day 2)."""
    return {"A": awkward_book(seed, n=n, start="2026-01-05T23:59:20", span_s=70.0),
            "B": awkward_book(seed + 1, n=n // 2 + 2, levels=3, start="2026-01-05T23:59:50", span_s=30.0)}


def run(book_path, out, bucket, levels=None, direct=True, scheduler="threads"):
    """The family's day grids, with the stored path (``direct``) or the graph; and how
    many instrument-days the stored path computed."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = WorkflowConfig(name="t", stores={"book": str(book_path)}, families=["imbalance"],
                         imbalance={"bucket": bucket, "levels": levels}, output=str(out), scheduler=scheduler)
    spy = mock.patch.object(imbalance_stored, "grid_from_chunks", wraps=imbalance_stored.grid_from_chunks)
    with mock.patch.object(ticked, "DIRECT_READS", direct), spy as counted:
        run_workflow(cfg)
    results = store.open_results(out)
    return {d: results[d]["imbalance"].to_dataset().load() for d in sorted(results.children)}, counted.call_count


def write_books(book, data: dict, chunk_rows: int, compression: str = "lz4") -> None:
    store.ensure_store(book, "book")
    store.set_store_compression(book, compression)
    for name, ds in data.items():
        store.write_book(ds, book, name, chunk_rows=chunk_rows)


@given(seed=st.integers(0, 10_000), n=st.integers(60, 160), chunk_rows=st.integers(1, 50),
       bucket=st.sampled_from(["1s", "7s", "1min", "1h"]), levels=st.sampled_from([None, 2]),
       compression=st.sampled_from(["lz4", "none"]))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_stored_path_equals_the_graph_for_any_chunking(tmp_path, seed, n, chunk_rows, bucket, levels, compression):
    """Compressed or not, read by the chunk reader into the ticks kernel (all levels) or
    decoded first (fewer levels): the graph's grid, to the bit."""
    book = tmp_path / f"book-{seed}-{chunk_rows}-{compression}.zarr"
    shutil.rmtree(book, ignore_errors=True)
    write_books(book, books(seed, n), chunk_rows, compression)
    meta = json.loads((book / "A" / "2026-01-05" / "bid_size" / "zarr.json").read_text())
    codecs = [c["name"] for c in meta["codecs"]]
    assert codecs == (["bytes", "crc32c"] if compression == "none" else ["bytes", "blosc", "crc32c"])
    stored, used = run(book, tmp_path / "stored.zarr", bucket, levels)
    graph, not_used = run(book, tmp_path / "graph.zarr", bucket, levels, direct=False)
    assert used == 4 and not_used == 0  # 2 instruments x 2 days, each from its chunk files
    assert list(stored) == list(graph) == ["2026-01-05", "2026-01-06"]
    for day in stored:
        xr.testing.assert_identical(stored[day], graph[day])


@pytest.mark.parametrize("bucket", ["1s", "5s"])  # buckets that divide a day: each day starts at midnight
def test_day_grids_from_chunk_files_equal_the_loop_reference(tmp_path, bucket):
    data = books(5, 150)
    for name, ds in data.items():
        store.write_book(ds, tmp_path / "book.zarr", name, chunk_rows=7)
    days, used = run(tmp_path / "book.zarr", tmp_path / "out.zarr", bucket, levels=3)
    assert used == 4
    whole = xr.concat([days[d] for d in sorted(days)], "time")
    ref, labels, names = reference_grid(data, bucket, levels=3)
    grid = whole.sel(time=labels)  # the days run on to midnight; the reference to the last snapshot
    assert list(grid.instrument.values) == names
    for name in VARS:
        np.testing.assert_array_equal(grid[name].values, ref[name], err_msg=name)


@pytest.mark.parametrize("compression", ["lz4", "none"])
@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing"])
def test_a_damaged_chunk_is_named_in_one_line(tmp_path, compression, damage):
    book = tmp_path / "book.zarr"
    write_books(book, books(9, 120), 16, compression)
    chunk = book / "A" / "2026-01-06" / "bid_size" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
    elif damage == "truncated":
        chunk.write_bytes(bytes(data[: len(data) // 2]))
    else:
        chunk.unlink()
    with pytest.raises(InputError) as found:
        run(book, tmp_path / "out.zarr", "1s")
    message = str(found.value)  # the day and the chunk (from the reader, or from the day's manifest)
    assert "A/2026-01-06" in message and "bid_size/c/1/0" in message and "\n" not in message


def test_a_day_grid_too_large_for_memory_is_left_to_the_graph(tmp_path):
    for name, ds in books(3, 60).items():
        store.write_book(ds, tmp_path / "book.zarr", name, chunk_rows=9)
    expected, used = run(tmp_path / "book.zarr", tmp_path / "a.zarr", "1s")
    with mock.patch.object(builtin_families, "STORED_GRID_BYTES", 1 << 20):  # 1 MB: below a 1 s day grid
        kept, not_used = run(tmp_path / "book.zarr", tmp_path / "b.zarr", "1s")
    assert used == 4 and not_used == 0
    for day in expected:
        xr.testing.assert_identical(kept[day], expected[day])


def stale_reference(t, origin, bucket, n_buckets, max_carry):
    """The stale-bucket rule in NumPy, step by step: the last snapshot of each bucket, the
    buckets holding a snapshot at or after the origin, the running last snapshot."""
    last = np.full(n_buckets, np.iinfo(np.int64).min)
    held = np.zeros(n_buckets, dtype=bool)
    for time in t:
        b = min(max((time - origin) // bucket, 0), n_buckets - 1)
        last[b] = max(last[b], time)
        held[b] |= time >= origin
    carried = np.maximum.accumulate(last)
    ends = origin + (np.arange(n_buckets, dtype=np.int64) + 1) * bucket
    return ~held & (carried > np.iinfo(np.int64).min) & (ends - carried > max_carry)


@given(data=st.data(), origin=st.integers(-50, 50), bucket=st.integers(1, 20), n_buckets=st.integers(1, 30),
       max_carry=st.integers(0, 60))
def test_stale_buckets_match_the_numpy_rule(data, origin, bucket, n_buckets, max_carry):
    from gpu_risk.kernels.imbalance import stale_buckets_cpu

    t = np.sort(np.array(data.draw(st.lists(st.integers(origin - 30, origin + n_buckets * bucket + 5),
                                            max_size=40)), dtype=np.int64))
    found = stale_buckets_cpu(t, origin, bucket, max_carry, np.iinfo(np.int64).min, np.empty(n_buckets, dtype=np.bool_))
    np.testing.assert_array_equal(found, stale_reference(t, origin, bucket, n_buckets, max_carry))
    # a lead-in row before the origin kept apart (its time carried in) is the same as in front
    lead = data.draw(st.integers(origin - 40, origin - 1))
    later = t[t >= origin]
    apart = stale_buckets_cpu(later, origin, bucket, max_carry, lead, np.empty(n_buckets, dtype=np.bool_))
    np.testing.assert_array_equal(apart, stale_reference(np.concatenate([[lead], later]), origin, bucket,
                                                         n_buckets, max_carry))


def test_a_failed_background_write_stops_the_run_and_leaves_no_complete_day(tmp_path):
    """A day's results are written behind the next day on the local schedulers: a write
    that fails stops the run (its error, not another), the day stays incomplete, and the
    next run computes it and the days after it."""
    for name, ds in books(7, 90).items():
        store.write_book(ds, tmp_path / "book.zarr", name, chunk_rows=16)
    out = tmp_path / "out.zarr"
    cfg = WorkflowConfig(name="t", stores={"book": str(tmp_path / "book.zarr")}, families=["imbalance"],
                         imbalance={"bucket": "1s"}, output=str(out), scheduler="threads")
    real = store.write_results_day

    def failing(path, date, *args, **kwargs):
        if date == "2026-01-05":
            raise OSError("No space left on device")
        return real(path, date, *args, **kwargs)

    with mock.patch.object(store, "write_results_day", failing), pytest.raises(OSError, match="No space left"):
        run_workflow(cfg)
    assert store.results_days(out) == []
    summary = run_workflow(cfg)
    assert summary["computed"] == ["2026-01-05", "2026-01-06"] and store.results_days(out) == summary["computed"]
    assert summary["days_wall"] > 0


def test_the_results_store_takes_the_book_stores_compression(tmp_path):
    """A new results store compresses as its book store does unless told; an existing one
    keeps its own; the grid is the same either way."""
    book = tmp_path / "book.zarr"
    write_books(book, books(4, 80), 16, "none")

    def codecs(out):
        doc = json.loads((out / "2026-01-06" / "imbalance" / "ofi" / "zarr.json").read_text())
        return [c["name"] for c in doc["codecs"]]

    def batch(out, compression=None):
        cfg = WorkflowConfig(name="t", stores={"book": str(book)}, families=["imbalance"], imbalance={"bucket": "1s"},
                             output=str(out), scheduler="threads", compression=compression, redo="all")
        run_workflow(cfg)
        results = store.open_results(out)
        return results["2026-01-06"]["imbalance"].to_dataset().load()

    fast = batch(tmp_path / "a.zarr")
    assert codecs(tmp_path / "a.zarr") == ["bytes", "crc32c"] and store.store_compression(tmp_path / "a.zarr") == "none"
    small = batch(tmp_path / "b.zarr", "lz4")
    assert codecs(tmp_path / "b.zarr") == ["bytes", "blosc", "crc32c"]
    again = batch(tmp_path / "b.zarr")  # an existing store keeps its own
    assert codecs(tmp_path / "b.zarr") == ["bytes", "blosc", "crc32c"]
    xr.testing.assert_identical(fast, small)
    xr.testing.assert_identical(fast, again)
    with pytest.raises(ValueError, match="compression"):
        store.set_store_compression(book, "zstd")


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_a_damaged_later_day_stops_the_run_there_after_the_days_before(tmp_path, compression):
    """The next day is opened while a day is computed: a damaged day still stops the run at
    itself, in one line, with every day before it complete and none after it written."""
    book = tmp_path / "book.zarr"
    data = {"A": awkward_book(11, n=240, start="2026-01-05T12:00:00", span_s=150_000.0)}  # three days
    write_books(book, data, 16, compression)
    assert store.complete_days(book, "A") == ["2026-01-05", "2026-01-06", "2026-01-07"]
    chunk = book / "A" / "2026-01-06" / "ask_size" / "c" / "0" / "0"
    damaged = bytearray(chunk.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    chunk.write_bytes(bytes(damaged))
    out = tmp_path / "out.zarr"
    cfg = WorkflowConfig(name="t", stores={"book": str(book)}, families=["imbalance"], imbalance={"bucket": "1s"},
                         output=str(out), scheduler="threads")
    with pytest.raises(InputError) as found:
        run_workflow(cfg)
    assert "2026-01-06" in str(found.value) and "\n" not in str(found.value)
    assert store.results_days(out) == ["2026-01-05"]
