"""Importer throughput on the real files in ../shared/data/real.

    python benchmarks/import.py [--data ../shared/data/real]

Prints snapshots/s (and input lines/s for Binance and Tardis) for each importer, best of 3,
each into a fresh store, and the same machine's one-thread memory read bandwidth for scale.
Tardis: the shared USD-M Binance capture written as incremental_book_L2 rows (the
conversion of tests/test_import_tardis.py), so that both importers read the same book.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

from gpu_risk.importers.binance import import_binance
from gpu_risk.importers.databento import import_databento
from gpu_risk.importers.lobster import import_lobster
from gpu_risk.importers.tardis import import_tardis


def timed(fn, repeat=3):
    best, result = float("inf"), None
    for _ in range(repeat):
        tmp = Path(tempfile.mkdtemp(prefix="gpu_risk_import_"))
        try:
            t0 = time.perf_counter()
            result = fn(tmp / "b.zarr")
            best = min(best, time.perf_counter() - t0)
        finally:
            shutil.rmtree(tmp)
    return best, result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data/real")
    args = p.parse_args()
    real = args.data
    print(f"machine: {machine()}")
    lob = real / "lobster_aapl_2012-06-21/bigfatwhale_1h_msg50_book1"
    s, r = timed(lambda out: import_lobster(lob / "AAPL_2012-06-21_orderbook_50.csv",
                                            lob / "AAPL_2012-06-21_message_50.csv", "2012-06-21", "AAPL", out))
    print(f"lobster   AAPL 1 h, level 1: {r['snapshots']:,} snapshots in {s:.2f} s = "
          f"{r['snapshots'] / s:,.0f} snapshots/s")
    lob10 = real / "lobster_aapl_2012-06-21/yilezheng_998rows_level10"
    s, r = timed(lambda out: import_lobster(next(lob10.glob("*orderbook_10.csv")), next(lob10.glob("*message_10.csv")),
                                            "2012-06-21", "AAPL", out))
    print(f"lobster   AAPL, 10 levels: {r['snapshots']:,} snapshots in {s:.2f} s = "
          f"{r['snapshots'] / s:,.0f} snapshots/s")
    feed = real / "binance_hftbacktest_feed"
    for name, files in (("usdm BTCUSDT", ["usdm/btcusdt_20240808.gz"]),
                        ("spot BTCUSDT", ["spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"]),
                        ("coinm BTCUSD_PERP", ["cm/btcusd_perp_20240808.gz", "cm/btcusd_perp_20240809.gz"])):
        s, r = timed(lambda out: import_binance([feed / f for f in files], 10, out))
        print(f"binance   {name}, 10 levels: {r['snapshots']:,} snapshots from {r['lines']:,} lines in {s:.2f} s = "
              f"{r['snapshots'] / s:,.0f} snapshots/s, {r['lines'] / s:,.0f} lines/s")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_import_tardis import _binance_as_tardis  # the tests' converter

    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "usdm_incremental_book_L2.csv"
        _binance_as_tardis(feed / "usdm/btcusdt_20240808.gz", rows)
        lines = sum(1 for _ in open(rows)) - 1
        s, r = timed(lambda out: import_tardis([rows], out, levels=10))
        print(f"tardis    usdm BTCUSDT as incremental_book_L2, 10 levels: "
              f"{r['instruments']['BTCUSDT']['snapshots']:,} snapshots from {lines:,} rows in {s:.2f} s = "
              f"{lines / s:,.0f} rows/s")
    dbn = real / "databento_aapl_mbp10_2024-10-21/first_25000_rows.csv"
    s, r = timed(lambda out: import_databento(dbn, out, on_bad_rows="flag"))
    print(f"databento AAPL MBP-10: {r['AAPL']['snapshots']:,} snapshots in {s:.2f} s = "
          f"{r['AAPL']['snapshots'] / s:,.0f} snapshots/s")


if __name__ == "__main__":
    main()
