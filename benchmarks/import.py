"""Importer throughput on the real files in ../shared/data/real.

    python benchmarks/import.py [--data ../shared/data/real]

Prints snapshots/s (and input lines/s for Binance and Tardis) for each importer, best of 3,
each into a fresh store, and the same machine's one-thread memory read bandwidth for scale.
Tardis: the shared USD-M Binance capture written as incremental_book_L2 rows (the
conversion of tests/test_import_tardis.py), so that both importers read the same book.

The shared captures are about 1/160 of a day, so a store's fixed cost per day written
(about 0.1-0.2 s: creating the day's arrays, validating and sealing it) weighs on them as it
does not on a real day. ``--long N`` also imports the USD-M capture continued N times (ids
and times shifted so that each copy continues the book; the REST snapshot only once), and
prints where the time went: reading and rebuilding the book against writing the store.
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


def long_capture(src: Path, dst: Path, copies: int) -> int:
    """The capture continued ``copies`` times: each copy's update ids and times shifted so
    that its first live diff continues the last copy's book; returns the number of lines."""
    import gzip
    import json

    lines = gzip.open(src, "rt").read().splitlines()
    msgs = [(int(line.split(" ", 1)[0]), json.loads(line.split(" ", 1)[1])) for line in lines]
    diffs = [m["data"] for _, m in msgs if m.get("data", {}).get("e") == "depthUpdate"]
    sid = next(m["lastUpdateId"] for _, m in msgs if "lastUpdateId" in m)
    live = [d for d in diffs if d["u"] >= sid]
    id_step = live[-1]["u"] - live[0]["pu"]
    ms_step = diffs[-1]["E"] - diffs[0]["E"] + 1
    n = 0
    with gzip.open(dst, "wt", compresslevel=1) as f:
        for copy in range(copies):
            for ts, m in msgs:
                if copy and "lastUpdateId" in m:
                    continue
                data = m.get("data", m)
                for key in ("U", "u", "pu"):
                    if key in data:
                        data[key] += copy * id_step if data.get("e") == "depthUpdate" or key == "u" else 0
                for key in ("E", "T"):
                    if key in data:
                        data[key] += copy * ms_step
                f.write(f"{ts + copy * ms_step * 10**6} {json.dumps(m, separators=(',', ':'))}\n")
                for key in ("U", "u", "pu"):  # back to the original for the next copy
                    if key in data:
                        data[key] -= copy * id_step if data.get("e") == "depthUpdate" or key == "u" else 0
                for key in ("E", "T"):
                    if key in data:
                        data[key] -= copy * ms_step
                n += 1
    return n


def where_time_went(files, levels: int) -> tuple[float, float]:
    """(seconds reading and rebuilding the book, seconds in the whole import), best of 3."""
    from gpu_risk.importers import binance

    class Sink:  # takes the snapshots and writes nothing
        def __init__(self, *args, **kwargs):
            self.last_added_ns, self.n = None, 0

        def add(self, time_ns, block, extras=None, where=None):
            self.n, self.last_added_ns = self.n + time_ns.size, int(time_ns[-1])

        def close(self):
            return self.n, []

        def discard(self):
            pass

    real = binance.DaySpool
    binance.DaySpool = Sink
    try:
        rebuild, _ = timed(lambda out: import_binance(files, levels, out))
    finally:
        binance.DaySpool = real
    whole, _ = timed(lambda out: import_binance(files, levels, out))
    return rebuild, whole


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data/real")
    p.add_argument("--long", type=int, default=0, help="also import the USD-M capture continued N times")
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
        rebuild, whole = where_time_went([feed / f for f in files], 10)
        print(f"          of which reading and rebuilding the book {rebuild:.2f} s ({r['lines'] / rebuild:,.0f} "
              f"lines/s), writing {len(r['days'])} store days {whole - rebuild:.2f} s")
    if args.long:
        with tempfile.TemporaryDirectory() as tmp:
            long_file = Path(tmp) / "usdm_long.gz"
            n = long_capture(feed / "usdm/btcusdt_20240808.gz", long_file, args.long)
            import gzip

            raw = sum(len(b) for b in iter(lambda f=gzip.open(long_file): f.read(1 << 24), b""))
            rebuild, whole = where_time_went([long_file], 10)
            s, r = timed(lambda out: import_binance([long_file], 10, out), repeat=1)
            print(f"binance   usdm BTCUSDT continued {args.long}x, 10 levels: {r['snapshots']:,} snapshots from "
                  f"{n:,} lines ({raw / 1e6:.0f} MB) in {s:.2f} s = {n / s:,.0f} lines/s, {raw / s / 1e6:.0f} MB/s; "
                  f"reading and rebuilding {rebuild:.2f} s, writing {len(r['days'])} days {whole - rebuild:.2f} s")
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
