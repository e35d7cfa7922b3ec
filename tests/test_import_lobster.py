"""The LOBSTER importer on the real samples in ../shared/data/real."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from gpu_risk import store
from gpu_risk.errors import InputError
from gpu_risk.importers.lobster import import_lobster

REAL = Path(__file__).resolve().parents[2] / "shared/data/real/lobster_aapl_2012-06-21"
SAMPLES = [("bigfatwhale_1h_msg50_book1", 91_997, 1), ("bigfatwhale_671rows_level50", 672, 50),
           ("yilezheng_998rows_level10", 999, 10)]


def files(sub):
    d = REAL / sub
    if not d.exists():
        pytest.skip("shared LOBSTER samples not present")
    return next(d.glob("*orderbook*.csv")), next(d.glob("*message*.csv"))


@pytest.mark.parametrize("sub,rows,levels", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_import_matches_raw_files(tmp_path, sub, rows, levels):
    ob, msg = files(sub)
    summary = import_lobster(ob, msg, "2012-06-21", "AAPL", tmp_path / "b.zarr", chunk_rows=4096)
    assert (summary["snapshots"], summary["levels"]) == (rows, levels)
    ds = store.open_book(tmp_path / "b.zarr")["AAPL"].to_dataset()  # validates every row
    raw = pd.read_csv(ob, header=None).to_numpy()
    seconds = pd.read_csv(msg, header=None)[0].to_numpy()
    for i in (0, rows // 2, rows - 1):
        row = ds.isel(time=i).load()
        for j, (name, dummy) in enumerate((("ask_price", 9999999999), ("ask_size", None),
                                           ("bid_price", -9999999999), ("bid_size", None))):
            want = raw[i, j::4].astype(float)
            if dummy is not None:
                want = np.where(want == dummy, np.nan, want / 10_000)
            np.testing.assert_array_equal(row[name].values, want)
        # 13:30 UTC is 09:30 New York (EDT) on 2012-06-21
        expected = np.datetime64("2012-06-21T04:00", "ns") + np.timedelta64(int(round(seconds[i] * 1e9)), "ns")
        assert row.time.values == expected
    if levels == 50:  # the sample has empty deep levels: NaN price, size 0
        assert ds.ask_price.isnull().any() and float(ds.ask_size.where(ds.ask_price.isnull()).max()) == 0


def test_row_count_mismatch_is_a_clear_error(tmp_path):
    ob, msg = files("yilezheng_998rows_level10")
    short = tmp_path / "short_message.csv"
    short.write_text("".join(open(msg).readlines()[:-5]))
    with pytest.raises(InputError, match="orderbook has 999 rows but the message file 994"):
        import_lobster(ob, short, "2012-06-21", "AAPL", tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()  # nothing written, nothing looking complete


def test_cli_import(tmp_path):
    import subprocess
    import sys

    ob, msg = files("yilezheng_998rows_level10")
    out = subprocess.run([sys.executable, "-m", "gpu_risk.cli", "import", "lobster", str(ob), str(msg),
                          "--date", "2012-06-21", "--instrument", "AAPL", "--out", str(tmp_path / "b.zarr"),
                          "--json"], capture_output=True, text=True, check=True)
    assert '"snapshots": 999' in out.stdout


def test_cli_import_into_an_uncompressed_store(tmp_path):
    """``--compression none`` records the choice on the store: the day's chunks hold the
    ticks themselves (with their CRC-32C), a later import keeps it, and the book reads the
    same as from the compressed store."""
    import json
    import subprocess
    import sys

    ob, msg = files("yilezheng_998rows_level10")

    def cli(out, *extra):
        return subprocess.run([sys.executable, "-m", "gpu_risk.cli", "import", "lobster", str(ob), str(msg),
                               "--date", "2012-06-21", "--instrument", "AAPL", "--out", str(out), *extra],
                              capture_output=True, text=True)

    assert cli(tmp_path / "raw.zarr", "--compression", "none").returncode == 0
    assert cli(tmp_path / "lz4.zarr").returncode == 0
    meta = json.loads((tmp_path / "raw.zarr" / "AAPL" / "2012-06-21" / "bid_price" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "crc32c"]
    assert store.store_compression(tmp_path / "raw.zarr") == "none"
    assert store.store_compression(tmp_path / "lz4.zarr") == "lz4"
    raw = store.open_book(tmp_path / "raw.zarr")["AAPL"].to_dataset().load()
    lz4 = store.open_book(tmp_path / "lz4.zarr")["AAPL"].to_dataset().load()
    xr.testing.assert_identical(raw.drop_attrs(), lz4.drop_attrs())
    refused = cli(tmp_path / "x.zarr", "--compression", "zstd")
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1 and "compression" in refused.stderr


def test_book_and_executions_are_consistent_with_the_messages(tmp_path):
    """An execution at the best ask (bid) reduces that queue by the executed size, or
    empties it; traded_volume carries the executions with their sign."""
    ob, msg = files("bigfatwhale_1h_msg50_book1")
    import_lobster(ob, msg, "2012-06-21", "AAPL", tmp_path / "b.zarr")
    ds = store.open_book(tmp_path / "b.zarr")["AAPL"].to_dataset().load()
    m = pd.read_csv(msg, header=None)
    kind, size, price, side = m[1].values, m[3].values, m[4].values / 10_000, m[5].values
    ask_p, ask_q = ds.ask_price.values[:, 0], ds.ask_size.values[:, 0]
    bid_p, bid_q = ds.bid_price.values[:, 0], ds.bid_size.values[:, 0]
    checked = {"ask": 0, "bid": 0}
    for n in np.flatnonzero(kind == 4):
        if n == 0:  # no book before the first message
            continue
        p_prev, q_prev, p_now, q_now, name = ((ask_p[n - 1], ask_q[n - 1], ask_p[n], ask_q[n], "ask")
                                              if side[n] == -1 else
                                              (bid_p[n - 1], bid_q[n - 1], bid_p[n], bid_q[n], "bid"))
        assert price[n] == p_prev, f"execution {n} not at the best {name}"
        if size[n] < q_prev:
            assert (p_now, q_now) == (p_prev, q_prev - size[n])
        else:
            assert size[n] == q_prev and p_now != p_prev  # the queue emptied; the touch moved
        checked[name] += 1
    assert checked == {"ask": 2224, "bid": 1843}  # every visible execution (the README's counts)
    executed = np.isin(kind, (4, 5))
    np.testing.assert_array_equal(ds.traded_volume.values, np.where(executed, -side * size, 0.0))
    assert ds.traded_volume.attrs["long_name"]


def test_a_later_file_of_the_same_day_continues_the_book(tmp_path):
    """The hour split in two files: imported one after the other, the store equals the
    whole hour imported at once; importing a pair again is skipped (the same bytes) or
    refused (other bytes, the same rows), and changes nothing."""
    import xarray as xr

    ob, msg = files("bigfatwhale_1h_msg50_book1")
    ob_lines, msg_lines = ob.read_text().splitlines(True), msg.read_text().splitlines(True)
    parts = []
    for k, (lo, hi) in enumerate(((0, 40_000), (40_000, len(ob_lines)))):
        o, m = tmp_path / f"ob{k}.csv", tmp_path / f"msg{k}.csv"
        o.write_text("".join(ob_lines[lo:hi]))
        m.write_text("".join(msg_lines[lo:hi]))
        parts.append((o, m))
    import_lobster(ob, msg, "2012-06-21", "AAPL", tmp_path / "whole.zarr", chunk_rows=8192)
    for o, m in parts:
        import_lobster(o, m, "2012-06-21", "AAPL", tmp_path / "parts.zarr", chunk_rows=8192)
    a = store.open_book(tmp_path / "whole.zarr")["AAPL"].to_dataset().load()
    b = store.open_book(tmp_path / "parts.zarr")["AAPL"].to_dataset().load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    again = import_lobster(*parts[1], "2012-06-21", "AAPL", tmp_path / "parts.zarr")
    assert again["skipped"] and again["snapshots"] == 0
    for path in parts[1]:  # the same rows in other bytes: not recognised, so refused as overlapping
        path.write_text(path.read_text().replace(",", ", ", 1))
    with pytest.raises(InputError, match="overlapping or repeated input"):
        import_lobster(*parts[1], "2012-06-21", "AAPL", tmp_path / "parts.zarr")
    xr.testing.assert_identical(store.open_book(tmp_path / "parts.zarr")["AAPL"].to_dataset().load().drop_attrs(),
                                a.drop_attrs())


def test_an_interrupted_day_rewrite_is_recovered(tmp_path):
    """Killed between the two renames of replace_day: the next write puts the complete new
    day in place; killed before the new day was complete: the old day comes back."""
    import shutil

    from conftest import make_book

    path = tmp_path / "b.zarr"
    old = make_book(n=50, start="2026-01-05T10:00", seed=1)
    new = make_book(n=80, start="2026-01-05T10:00", seed=2)
    store.write_book(old, path, "X")
    store.write_book(new, tmp_path / "tmp.zarr", "X")
    shutil.copytree(tmp_path / "tmp.zarr/X/2026-01-05", path / "X/2026-01-05.new")
    (path / "X/2026-01-05").rename(path / "X/2026-01-05.old")  # killed here
    assert store.book_days(path) == {"X": []}
    store.recover_day(path, "X/2026-01-05")
    assert store.open_book(path)["X"].sizes["time"] == 80
    # an incomplete .new next to an intact day is dropped
    shutil.copytree(tmp_path / "tmp.zarr/X/2026-01-05", path / "X/2026-01-05.new")
    import zarr

    zarr.open_group(str(path), path="X/2026-01-05.new", mode="r+").attrs[store.COMPLETE] = False
    store.recover_day(path, "X/2026-01-05")
    assert not (path / "X/2026-01-05.new").exists() and store.open_book(path)["X"].sizes["time"] == 80


def _big_lobster(folder, rows: int, levels: int = 10):
    """A valid LOBSTER pair of ``rows`` rows (prices in dollars x 10000)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    mid = 1_000_000 + np.cumsum(rng.integers(-1, 2, rows)) * 100
    cols = {}
    for k in range(levels):
        cols[4 * k] = mid + 100 * (k + 1)
        cols[4 * k + 1] = rng.integers(1, 500, rows)
        cols[4 * k + 2] = mid - 100 * (k + 1)
        cols[4 * k + 3] = rng.integers(1, 500, rows)
    book = folder / "X_2012-06-21_34200000_57600000_orderbook_10.csv"
    msg = folder / "X_2012-06-21_34200000_57600000_message_10.csv"
    pd.DataFrame(cols).to_csv(book, header=False, index=False)
    seconds = 34_200 + np.sort(rng.uniform(0, 23_400, rows))
    pd.DataFrame({0: seconds, 1: rng.choice([1, 3, 4], rows), 2: np.arange(rows), 3: rng.integers(1, 100, rows),
                  4: mid, 5: rng.choice([-1, 1], rows)}).to_csv(msg, header=False, index=False, float_format="%.9f")
    return book, msg


def test_importing_a_file_10x_the_samples_keeps_memory_bounded(tmp_path):
    """`gpu-risk import lobster` on a generated pair 10x the largest shared sample, and on
    one twice as large again: peak RSS grows by well under the added input (both files
    are read in blocks), so memory does not follow the file's size."""
    import shutil
    import subprocess
    import sys

    script = ("import resource, sys\n"
              "from gpu_risk.cli import main\n"
              "sys.argv = ['gpu-risk', 'import', 'lobster', *sys.argv[1:]]\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n")

    def peak(rows):
        folder = tmp_path / str(rows)
        if not folder.exists():
            folder.mkdir()
            _big_lobster(folder, rows)
        book, msg = (folder / f"X_2012-06-21_34200000_57600000_{kind}_10.csv" for kind in ("orderbook", "message"))
        shutil.rmtree(folder / "b.zarr", ignore_errors=True)
        done = subprocess.run([sys.executable, "-c", script, str(book), str(msg), "--date", "2012-06-21",
                               "--instrument", "X", "--out", str(folder / "b.zarr"), "--chunk-rows", "20000"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1]), book.stat().st_size + msg.stat().st_size

    # a first run compiles (and caches) every numba specialization the import meets: LLVM's
    # memory then counts in that process's peak, once, whatever the file's size
    peak(300_000)
    rss_10x, size_10x = peak(150_000)
    rss_20x, size_20x = peak(300_000)
    assert size_10x > 10 * 3_756_788  # 10x the largest shared LOBSTER file
    assert rss_20x - rss_10x < 0.5 * (size_20x - size_10x), (rss_10x, rss_20x, size_10x, size_20x)
