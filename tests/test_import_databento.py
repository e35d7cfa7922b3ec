"""The Databento MBP-10 importer on the real sample in ../shared/data/real."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpu_risk import store
from gpu_risk.errors import InputError
from gpu_risk.importers.databento import import_databento

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/real/databento_aapl_mbp10_2024-10-21/first_25000_rows.csv"


@pytest.fixture
def sample():
    if not SAMPLE.exists():
        pytest.skip("shared Databento sample not present")
    return SAMPLE


def test_the_real_file_has_one_corrupt_field_named_exactly(tmp_path, sample):
    """Line 22 of the shared copy holds bid_px_02 = '2 33.53' (a stray space; the README's
    other copy of the file is one byte shorter). Default: a clear error, nothing written."""
    with pytest.raises(InputError) as info:
        import_databento(sample, tmp_path / "b.zarr", chunk_rows=1024)
    err = info.value
    assert (err.index, err.variable, err.count) == (22, "bid_px_02", 1)
    assert "'2 33.53'" in str(err) and "first_25000_rows.csv" in str(err)
    assert not (tmp_path / "b.zarr").exists()


def test_import_matches_raw_rows(tmp_path, sample):
    result = import_databento(sample, tmp_path / "b.zarr", chunk_rows=1024, on_bad_rows="flag")
    assert result == {"AAPL": {"snapshots": 5000, "days": ["2024-10-21"]},
                      "bad_fields": [[22, "bid_px_02", "2 33.53"]]}
    flagged = store.open_book(tmp_path / "b.zarr", on_bad_rows="flag")["AAPL"].to_dataset()
    assert list(np.flatnonzero(flagged.qc_row_excluded.values)) == [20]  # line 22 = row 20
    ds = flagged.isel(time=np.delete(np.arange(flagged.sizes["time"]), 20))
    raw = pd.read_csv(sample).drop(index=20).reset_index(drop=True)
    for i in (0, 2500, 4998):
        row = ds.isel(time=i).load()
        assert row.time.values == np.datetime64(raw.ts_event[i].rstrip("Z"), "ns")
        for name, col in (("bid_price", "bid_px"), ("ask_price", "ask_px"), ("bid_size", "bid_sz"),
                          ("ask_size", "ask_sz")):
            want = raw[[f"{col}_{k:02d}" for k in range(10)]].iloc[i].astype(float).values
            np.testing.assert_array_equal(row[name].values, want)


def test_wrong_header_and_malformed_rows(tmp_path, sample):
    bad = tmp_path / "bad.csv"
    lines = sample.read_text().splitlines(keepends=True)
    lines = [line.replace("2 33.53", "233.53") for line in lines]  # mend the known corrupt field
    bad.write_text(lines[0].replace("bid_px_03", "bid_price_03") + "".join(lines[1:50]))
    with pytest.raises(InputError, match="not an MBP-10 CSV") as info:
        import_databento(bad, tmp_path / "b.zarr")
    assert "bad.csv" in str(info.value) and "line 1" in str(info.value)
    bad.write_text("".join(lines[:30]) + lines[30].replace("2024-10-21T", "yesterday ") + "".join(lines[31:60]))
    with pytest.raises(InputError, match="ts_event 'yesterday") as info:
        import_databento(bad, tmp_path / "c.zarr")
    assert info.value.index == 31
    assert not (tmp_path / "c.zarr").exists()


def test_prices_out_of_order_are_caught_on_open(tmp_path, sample):
    lines = [line.replace("2 33.53", "233.53") for line in sample.read_text().splitlines(keepends=True)]
    header = lines[0].strip().split(",")
    row = lines[10].strip().split(",")
    i2, i3 = header.index("bid_px_02"), header.index("bid_px_03")
    row[i2], row[i3] = row[i3], row[i2]  # bid ladder no longer decreasing
    bad = tmp_path / "order.csv"
    bad.write_text("".join(lines[:10]) + ",".join(row) + "\n" + "".join(lines[11:40]))
    import_databento(bad, tmp_path / "b.zarr")
    with pytest.raises(InputError, match="ladder") as info:
        store.open_book(tmp_path / "b.zarr")
    assert info.value.index == 9 and info.value.variable == "bid_price"


def test_appending_a_later_file(tmp_path, sample):
    import xarray as xr

    lines = [line.replace("2 33.53", "233.53") for line in sample.read_text().splitlines(keepends=True)]
    whole, first, second = tmp_path / "whole.csv", tmp_path / "first.csv", tmp_path / "second.csv"
    whole.write_text("".join(lines))
    first.write_text("".join(lines[:3001]))
    second.write_text(lines[0] + "".join(lines[3001:]))
    import_databento(whole, tmp_path / "w.zarr")
    import_databento(first, tmp_path / "p.zarr")
    import_databento(second, tmp_path / "p.zarr")
    a = store.open_book(tmp_path / "w.zarr")["AAPL"].to_dataset().load()
    b = store.open_book(tmp_path / "p.zarr")["AAPL"].to_dataset().load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    # a file already imported is recognised by its bytes and skipped, the store unchanged
    assert import_databento(second, tmp_path / "p.zarr") == {"skipped_files": [str(second)]}
    xr.testing.assert_identical(store.open_book(tmp_path / "p.zarr")["AAPL"].to_dataset().load().drop_attrs(),
                                b.drop_attrs())
    # the same rows in other bytes are not the same file: refused, never applied twice
    (tmp_path / "again.csv").write_text(second.read_text() + "\n")
    with pytest.raises(InputError, match="overlapping or repeated input"):
        import_databento(tmp_path / "again.csv", tmp_path / "p.zarr")
    xr.testing.assert_identical(store.open_book(tmp_path / "p.zarr")["AAPL"].to_dataset().load().drop_attrs(),
                                b.drop_attrs())


@pytest.mark.parametrize("value", ["1e999", "1e300"])
def test_an_infinite_or_absurd_size_is_caught_on_open(tmp_path, sample, value):
    """A size field of 1e999 (read as inf) or 1e300 (finite, but its sums overflow): opening
    the store names the variable and the snapshot; in flag mode only that row is left out."""
    lines = [line.replace("2 33.53", "233.53") for line in sample.read_text().splitlines(keepends=True)]
    header = lines[0].strip().split(",")
    row = lines[21].strip().split(",")
    row[header.index("ask_sz_03")] = value
    bad = tmp_path / "huge.csv"
    bad.write_text("".join(lines[:21]) + ",".join(row) + "\n" + "".join(lines[22:60]))
    import_databento(bad, tmp_path / "b.zarr")
    with pytest.raises(InputError, match="a size is NaN, infinite, negative or above 1e18") as info:
        store.open_book(tmp_path / "b.zarr")
    assert (info.value.variable, info.value.index, info.value.instrument) == ("ask_size", 20, "AAPL")
    flagged = store.open_book(tmp_path / "b.zarr", on_bad_rows="flag")["AAPL"].to_dataset()
    assert np.flatnonzero(flagged.qc_row_excluded.values).tolist() == [20]


def _repeated(sample, out, times):
    """The sample's rows ``times`` over, each repetition shifted past the previous one."""
    rows = pd.read_csv(sample, dtype=str).replace("2 33.53", "233.53")
    stamps = {col: pd.to_datetime(rows[col].str.removesuffix("Z")) for col in ("ts_event", "ts_recv")}
    span = stamps["ts_event"].iloc[-1] - stamps["ts_event"].iloc[0] + pd.Timedelta("1ms")
    with open(out, "w") as f:
        for k in range(times):
            part = rows.copy()
            for col, t in stamps.items():
                part[col] = (t + k * span).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            part.to_csv(f, header=k == 0, index=False)


def test_importing_a_file_20x_the_sample_keeps_memory_bounded(tmp_path, sample):
    """Files of 20x and 40x the sample's bytes: the second import's peak RSS exceeds the
    first's by less than a quarter of the added input plus the one-pass day limit (the CSV
    is read in blocks, and the snapshots beyond that limit are spooled to disk a chunk at a
    time)."""
    import subprocess
    import sys

    script = ("import resource, sys\n"
              "from gpu_risk.importers.databento import import_databento\n"
              "import_databento(sys.argv[1], sys.argv[2], chunk_rows=4096)\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n")

    def peak(times):
        src = tmp_path / f"{times}.csv"
        _repeated(sample, src, times)
        done = subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / f"{times}.zarr")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1]), src.stat().st_size

    rss_20x, size_20x = peak(20)
    rss_40x, size_40x = peak(40)
    assert size_20x > 10 * sample.stat().st_size
    days = store.open_book(tmp_path / "40.zarr", validate=False)["AAPL"]
    assert days.sizes["time"] == 40 * (len(sample.read_text().splitlines()) - 1)
    # a day of at most WHOLE_DAY_BYTES is held in memory for its one-pass write: a constant,
    # which these files' last days reach, on top of what grows with the input
    from gpu_risk.importers._spool import WHOLE_DAY_BYTES

    assert rss_40x - rss_20x < 0.25 * (size_40x - size_20x) + WHOLE_DAY_BYTES, (rss_20x, rss_40x, size_20x,
                                                                                 size_40x)
