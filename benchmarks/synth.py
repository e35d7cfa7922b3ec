"""Synthetic-data generation at the foundation issue's size, with its memory bound.

    python benchmarks/synth.py [--days 3 --instruments 4 --accounts 100000 --snapshots 100000]

Prints wall time, snapshots/s, the peak resident memory of the process, the bytes the
dataset would take in memory, and the time to validate it (every book snapshot and every
account), so "bounded memory" is a measured ratio, not a claim.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from gpu_risk import store
from gpu_risk.synth import SynthConfig, synth


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--instruments", type=int, default=4)
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--snapshots", type=int, default=100_000, help="per instrument and day")
    p.add_argument("--levels", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_risk_synth_"))
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    summary = synth(SynthConfig(out=str(out), days=args.days, instruments=args.instruments,
                                accounts=args.accounts, levels=args.levels,
                                snapshots_per_day=args.snapshots))
    wall = time.perf_counter() - t0
    rss_synth = peak_rss_mb()
    snapshots = args.days * args.instruments * args.snapshots
    book_bytes = snapshots * (4 * args.levels * 8 + 8)
    n_inst = len(summary["instruments"]) + len(summary["options"])
    pos_bytes = args.days * args.accounts * (8 * (3 * n_inst + 5) + 8)
    t1 = time.perf_counter()
    for day in summary["days"]:
        market = store.open_market(summary["market"], day)
        store.open_positions(summary["positions"], day, market=market)
    store.open_book(summary["book"])
    validate_s = time.perf_counter() - t1
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"synth {args.days} days x {args.instruments} instruments x {args.snapshots:,} snapshots "
          f"x {args.levels} levels; {args.accounts:,} accounts")
    print(f"wall: {wall:.1f} s   ({snapshots / wall:,.0f} snapshots/s incl. positions)")
    print(f"dataset in memory would be {(book_bytes + pos_bytes) / 2**20:,.0f} MiB; on disk "
          f"{dir_mb(out):,.0f} MiB (zstd)")
    print(f"peak RSS: {rss_synth:,.0f} MiB (at start {rss0:,.0f} MiB); "
          f"ratio peak/dataset {rss_synth / ((book_bytes + pos_bytes) / 2**20):.2f}")
    print(f"validation of everything written: {validate_s:.1f} s; peak RSS after {peak_rss_mb():,.0f} MiB")
    if args.out is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
