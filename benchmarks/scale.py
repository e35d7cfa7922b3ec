"""The overnight workflow on a dataset many times the workers' memory limit.

    python benchmarks/scale.py [--days 30] [--snapshots 260000] [--accounts 50000]
                               [--memory-limit 1GB] [--workers 2] [--keep DIR]

Writes a synthetic dataset (4 instruments), starts a LocalCluster whose workers each have
``--memory-limit``, runs the overnight workflow (every family) over the first day, then
over every day, and prints: the dataset's uncompressed size against the limit, seconds per
day for 1 day and for all days (and their ratio), and each worker's peak RSS against the
limit.
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


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--snapshots", type=int, default=260_000, help="per instrument and day")
    p.add_argument("--accounts", type=int, default=50_000)
    p.add_argument("--memory-limit", default="1GB")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep", help="directory for the synthetic data (reused when present)")
    args = p.parse_args()

    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    from gpu_risk.synth import SynthConfig, synth
    from gpu_risk.workflow import load_config, run_workflow

    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_risk_scale_"))
    data = Path(args.keep) if args.keep else tmp / "data"
    try:
        if not (data / "book.zarr").exists():
            t0 = time.perf_counter()
            synth(SynthConfig(out=str(data), days=args.days, instruments=4, accounts=args.accounts,
                              levels=10, snapshots_per_day=args.snapshots))
            print(f"synthetic data: {time.perf_counter() - t0:.0f} s")
        from gpu_risk import store

        book_bytes = 0
        for inst, days in store.book_days(data / "book.zarr").items():
            for day in days:
                ds = store.open_day_dataset(data / "book.zarr", f"{inst}/{day}")
                book_bytes += sum(ds[v].size * 8 for v in ("bid_price", "ask_price", "bid_size", "ask_size"))
        limit = parse_bytes(args.memory_limit)
        print(f"dataset: {args.days} days x 4 instruments x {args.snapshots:,} snapshots x 10 levels = "
              f"{book_bytes / 1e9:.1f} GB of book as float64 (plus {args.accounts:,} accounts a day); "
              f"{book_bytes / limit:.1f}x the per-worker memory limit {args.memory_limit}")
        repo = Path(__file__).resolve().parents[1]
        all_days = store.complete_days(data / "book.zarr", "BTCUSDT")
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          memory_limit=args.memory_limit, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            for label, dates in (("1 day", all_days[:1]), (f"{len(all_days)} days", all_days)):
                out = tmp / f"results-{len(dates)}.zarr"
                cfg = load_config(repo / "workflows" / "overnight.yaml", {
                    "stores": {"book": str(data / "book.zarr"), "positions": str(data / "positions.zarr"),
                               "market": str(data / "market.zarr")},
                    "output": str(out), "report": None, "scheduler": cluster.scheduler_address,
                    "memory_limit": args.memory_limit, "dates": dates})
                t0 = time.perf_counter()
                summary = run_workflow(cfg)
                wall = time.perf_counter() - t0
                per_day = sorted(summary["seconds"].values())
                mean = sum(per_day) / len(per_day)
                print(f"{label}: {wall:.1f} s wall, {mean:.2f} s per day (min {per_day[0]:.2f}, "
                      f"median {per_day[len(per_day) // 2]:.2f}, max {per_day[-1]:.2f})")
                if len(dates) > 1:
                    first, last = per_day_by_date(summary, dates[:5]), per_day_by_date(summary, dates[-5:])
                    print(f"  first 5 days {first:.2f} s per day, last 5 days {last:.2f} s per day: "
                          f"ratio {last / first:.2f}")
            peaks = client.run(_peak_rss)
            for worker, peak in peaks.items():
                print(f"worker {worker}: peak RSS {peak / 1e9:.2f} GB = {peak / limit:.2f}x the limit")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def per_day_by_date(summary: dict, dates) -> float:
    values = [summary["seconds"][d] for d in dates if d in summary["seconds"]]
    return sum(values) / len(values)


if __name__ == "__main__":
    main()
