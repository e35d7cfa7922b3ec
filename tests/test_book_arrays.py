"""The instrument-arrays book layout: the same data as day groups, appends, rewrites, a
killed writer, damaged chunks, and the migration that converts a store."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import make_book

import gpu_risk
from gpu_risk import store
from gpu_risk.errors import InputError
from gpu_risk.stores import book_arrays
from gpu_risk.stores.book_arrays import is_instrument_arrays, migrate_book


@pytest.fixture(scope="module")
def migrated(tiny_dataset, tmp_path_factory):
    """The shared synthetic book as day groups and, migrated, as instrument arrays."""
    out = tmp_path_factory.mktemp("arrays") / "book.zarr"
    shutil.copytree(tiny_dataset["book"], out)
    summary = migrate_book(out, chunk_rows=2500)  # chunks that straddle the days
    assert summary == {i: len(d) for i, d in store.book_days(tiny_dataset["book"]).items()}
    return Path(tiny_dataset["book"]), out


def _plain(ds: xr.Dataset) -> xr.Dataset:
    return ds.drop_attrs()


def test_migrated_store_reads_the_same_snapshots_and_grids(migrated):
    groups, arrays = migrated
    assert not Path(str(arrays) + ".migrating").exists() and not Path(str(arrays) + ".day-groups").exists()
    days = store.book_days(groups)
    assert store.book_days(arrays) == days
    for inst, inst_days in days.items():
        assert is_instrument_arrays(arrays, inst)
        for start, end in ((None, None), (inst_days[0], inst_days[0]), (inst_days[-1], None)):
            a = store.open_book_instrument(groups, inst, start, end)
            b = store.open_book_instrument(arrays, inst, start, end)
            xr.testing.assert_identical(_plain(a), _plain(b))
            assert a.attrs["days"] == b.attrs["days"]
        for day in inst_days:
            xr.testing.assert_identical(_plain(store.last_valid_snapshot(groups, inst, day)),
                                        _plain(store.last_valid_snapshot(arrays, inst, day)))
    xr.testing.assert_identical(gpu_risk.imbalance_grid(store.open_book(groups), "1min").compute(),
                                gpu_risk.imbalance_grid(store.open_book(arrays), "1min").compute())


def test_append_rewrite_and_identity(tmp_path):
    path = tmp_path / "b.zarr"
    store.write_book(make_book(n=30, start="2026-01-05T10:00"), path, "X")
    migrate_book(path)
    first_id = store.day_identity(path, "X/2026-01-05")
    new_day = make_book(n=25, start="2026-01-06T09:00", seed=3)
    assert store.write_book(new_day, path, "X") == ["2026-01-06"]
    assert store.book_days(path) == {"X": ["2026-01-05", "2026-01-06"]}
    xr.testing.assert_identical(_plain(store.open_book_instrument(path, "X", "2026-01-06", "2026-01-06")),
                                _plain(new_day.astype(np.float64)))
    # the first day written again, with other values: the new rows are read, the old never
    again = make_book(n=12, start="2026-01-05T11:00", seed=9)
    store.write_book(again, path, "X")
    got = store.open_book_instrument(path, "X")
    assert got.sizes["time"] == 12 + 25
    xr.testing.assert_identical(_plain(got.sel(time=slice("2026-01-05", "2026-01-05T23:59"))),
                                _plain(again.astype(np.float64)))
    assert store.day_identity(path, "X/2026-01-05") != first_id  # results made from it are stale
    assert store.has_book_day(path, "X", "2026-01-06") and not store.has_book_day(path, "X", "2026-01-07")


def test_a_writer_killed_before_its_commit_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "b.zarr"
    store.write_book(make_book(n=30), path, "X")
    migrate_book(path)
    before = store.open_book_instrument(path, "X").load()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(book_arrays, "_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_book(make_book(n=20, start="2026-01-06T09:00", seed=5), path, "X")
    monkeypatch.undo()
    # the rows written past the committed end belong to no day
    # (the chunk shared with the committed rows was rewritten: the store is validated again
    # on opening until the next commit seals it)
    xr.testing.assert_identical(_plain(store.open_book_instrument(path, "X").load()), _plain(before))
    assert store.book_days(path) == {"X": ["2026-01-05"]}
    later = make_book(n=7, start="2026-01-07T09:00", seed=6)
    store.write_book(later, path, "X")
    xr.testing.assert_identical(_plain(store.open_book_instrument(path, "X", "2026-01-07")),
                                _plain(later.astype(np.float64)))


def test_a_deleted_or_truncated_chunk_is_noticed_not_trusted(tmp_path):
    path = tmp_path / "b.zarr"
    store.write_book(make_book(n=40), path, "X", chunk_rows=16)
    migrate_book(path, chunk_rows=16)
    store.open_book_instrument(path, "X")  # clean and sealed: trusted
    shutil.rmtree(path / "X" / "bid_size" / "c" / "1")
    for mode in ("raise", "flag"):  # a missing chunk would read as empty levels: named instead
        with pytest.raises(InputError, match="damaged store.*X.*bid_size/c/1/0 is missing"):
            store.open_book_instrument(path, "X", on_bad_rows=mode)
    # a chunk rewritten with readable values is validated again (here: sizes made negative)
    shutil.rmtree(path)
    store.write_book(make_book(n=40), path, "X", chunk_rows=16)
    migrate_book(path, chunk_rows=16)
    sizes = zarr.open_array(str(path), path="X/bid_size", mode="r+")
    sizes[16:32] = -np.abs(sizes[16:32]) - 1
    with pytest.raises(InputError, match="bid_size"):
        store.open_book_instrument(path, "X")
    flagged = store.open_book_instrument(path, "X", on_bad_rows="flag")
    assert int(flagged["qc_row_excluded"].sum()) == 16
    # a truncated chunk is named
    chunk = path / "X" / "ask_size" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    with pytest.raises(InputError, match="ask_size/c/0/0 cannot be read"):
        store.open_book_instrument(path, "X")
    with pytest.raises(InputError, match="ask_size/c/0/0 cannot be read"):
        store.last_valid_snapshot(path, "X", "2026-01-05")


def test_a_day_off_the_instruments_tick_grid_is_refused(tmp_path):
    path = tmp_path / "b.zarr"
    store.write_book(make_book(n=30, tick=0.5), path, "X")
    migrate_book(path)
    off = make_book(n=10, start="2026-01-06T09:00", tick=0.5)
    off["bid_price"] = off["bid_price"] + 0.25  # a finer grid than the instrument's
    with pytest.raises(InputError, match="tick grid"):
        store.write_book(off, path, "X")
    assert store.book_days(path) == {"X": ["2026-01-05"]}


def test_other_tools_read_the_arrays_with_plain_xarray(migrated):
    _, arrays = migrated
    inst = store.book_instruments(arrays)[0]
    plain = xr.open_zarr(arrays, group=inst, zarr_format=3, consolidated=False)
    ours = store.open_book_instrument(arrays, inst)
    n = ours.sizes["time"]
    np.testing.assert_allclose(plain["bid_price"].values[:n], ours["bid_price"].values, rtol=1e-15)
    assert (plain["time"].values[:n] == ours["time"].values).all()


def test_migrate_from_the_command_line_then_validate_and_refuse_an_import(tmp_path):
    import json
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "gpu_risk.cli", *map(str, args)], capture_output=True, text=True)

    made = json.loads(cli("synth", "--out", tmp_path / "d", "--days", 2, "--instruments", 2, "--accounts", 50,
                          "--snapshots-per-day", 300, "--levels", 3, "--json").stdout)
    before = store.open_book(made["book"]).map_over_datasets(lambda ds: ds.load())
    done = cli("migrate", made["book"], "--chunk-rows", 256, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["days"] == {"BTCUSDT": 2, "ETHUSDT": 2}
    after = store.open_book(made["book"])
    for inst in before.children:
        xr.testing.assert_identical(_plain(before[inst].to_dataset()), _plain(after[inst].to_dataset().load()))
    ok = cli("validate", "--book", made["book"], "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["book"] == {"BTCUSDT": 300 * 2, "ETHUSDT": 300 * 2}
    # synth again: every day is there, nothing is appended twice
    again = cli("synth", "--out", tmp_path / "d", "--days", 2, "--instruments", 2, "--accounts", 50,
                "--snapshots-per-day", 300, "--levels", 3, "--json")
    assert again.returncode == 0, again.stderr
    assert store.book_days(made["book"]) == {"BTCUSDT": made["days"], "ETHUSDT": made["days"]}
    assert store.open_book_instrument(made["book"], "BTCUSDT").sizes["time"] == 600
    # the importers resume and rewrite day groups: a store of instrument arrays is refused in one line
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "lobster_aapl_2012-06-21"
    folder = real / "yilezheng_998rows_level10"
    if folder.exists():
        book = folder / "AAPL_2012-06-21_34200000_57600000_orderbook_10.csv"
        msg = folder / "AAPL_2012-06-21_34200000_57600000_message_10.csv"
        refused = cli("import", "lobster", book, msg, "--date", "2012-06-21", "--instrument", "AAPL",
                      "--out", made["book"])
        assert refused.returncode == 2 and "gpu-risk migrate" in refused.stderr
        assert "Traceback" not in refused.stderr
    again_migrate = cli("migrate", made["book"])  # already migrated: nothing changes
    assert again_migrate.returncode == 0, again_migrate.stderr
    assert store.book_days(made["book"]) == {"BTCUSDT": made["days"], "ETHUSDT": made["days"]}
