"""The LOBSTER importer on the real samples in ../shared/data/real."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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
