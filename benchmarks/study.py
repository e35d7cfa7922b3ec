"""A historical study's cost per day, from 10 to 90 days: is it flat?

    python benchmarks/study.py [--days 10 30 90] [--keep DIR]

Writes a synthetic 90-day dataset once (book, positions, market, market history: 2
perpetuals, 2,000 accounts, 20,000 snapshots a day; `gpu-risk synth --market-history`),
then runs `gpu-risk run workflows/study.yaml` over the first N days, each into a fresh
results store, as users run it (the command line, a new process). Prints for each N the
wall time, seconds per day, the workflow's own per-day stage breakdown (first and last
ten days) and the study step (joining the days and writing the report); and, for scale,
the imbalance kernel alone on one day's book and the machine's read bandwidth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, read_bandwidth

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--days", type=int, nargs="+", default=[10, 30, 90])
    p.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the synthetic data here")
    args = p.parse_args()
    print(f"machine: {machine()}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="gpu_risk_study_"))
    data = work / "data"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gpu_risk.cli", "synth", "--out", str(data), "--days", str(max(args.days)),
                    "--instruments", "2", "--accounts", "2000", "--snapshots-per-day", "20000", "--market-history"],
                   check=True, capture_output=True)
    print(f"synthetic data, {max(args.days)} days: {time.perf_counter() - t0:.0f} s (reused where present)")
    gbps = read_bandwidth() / 1e9
    book_bytes = 2 * 20_000 * 10 * 4 * 8  # instruments x snapshots x levels x 4 variables x float64
    from gpu_risk import store
    from gpu_risk.imbalance import imbalance_grid

    book = store.open_book(data / "book.zarr", start="2026-01-05", end="2026-01-05")
    loaded = book.map_over_datasets(lambda ds: ds.load())
    kernel = min(_timed(lambda: imbalance_grid(loaded, "1min", levels=5, bands_bps=[10, 50]).compute())
                 for _ in range(3))
    print(f"imbalance kernel alone, one day in memory: {kernel:.3f} s; machine read bandwidth {gbps:.1f} GB/s "
          f"(one day's book, {book_bytes / 1e6:.0f} MB, reads in {book_bytes / gbps / 1e9 * 1e3:.1f} ms)")
    rows = []
    for days in args.days:
        out = work / f"run{days}"
        shutil.rmtree(out, ignore_errors=True)
        end = str(np.datetime64("2026-01-05") + np.timedelta64(days - 1, "D"))
        cmd = [sys.executable, "-m", "gpu_risk.cli", "run", str(ROOT / "workflows/study.yaml"), "--json",
               "--book", str(data / "book.zarr"), "--positions", str(data / "positions.zarr"),
               "--market", str(data / "market.zarr"), "--market-history", str(data / "market_history.zarr"),
               "--output", str(out / "results.zarr"), "--end", end]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        wall = time.perf_counter() - t0
        if done.returncode not in (0, 3):
            raise SystemExit(done.stderr[-2000:])
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = [summary["seconds"][d] for d in summary["dates"]]
        first, last = np.mean(seconds[:10]), np.mean(seconds[-10:])
        rows.append((days, wall, wall / days, np.mean(seconds), first, last, summary["study"]["seconds"]))
        stages = summary["stages"][summary["dates"][-1]]["breakdown"]
        top = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])[:4])
        print(f"{days:3d} days: {wall:6.1f} s wall, {wall / days:.2f} s/day (process start and study included); "
              f"workflow {np.mean(seconds):.2f} s/day (first 10 days {first:.2f}, last 10 {last:.2f}); study "
              f"step {summary['study']['seconds']:.2f} s; last day: {top}; kernel alone {kernel:.3f} s/day = "
              f"{kernel / np.mean(seconds):.1%} of a day's time")
    base = rows[0][2]
    for days, _wall, per_day, *_ in rows[1:]:
        print(f"cost per day, {days} days against {rows[0][0]}: {per_day / base:.2f}x")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
