"""The batch as users run it, against the kernels alone and the machine's bandwidth.

    python benchmarks/batch.py [--snapshots 1000000] [--days 2] [--instruments 2]
                               [--demo] [--history] [--keep DIR]

One run prints, on the same synthetic data and the same cores:

1. `gpu-risk imbalance` Zarr to Zarr (the workflow the command runs, threads and a
   LocalCluster): snapshots/s, the ratio to the imbalance kernel alone on the same data
   (all cores, data in memory), GB/s of uncompressed book read against the machine's
   read bandwidth, and where the time went (stages from the run's own breakdown);
2. the public API on a book in memory (`imbalance_grid`): against the one-thread read
   bandwidth, the kernel alone and a pandas implementation;
3. with --demo, the whole overnight workflow on the demo data (every family): each
   stage's share of the wall time;
4. with --history, the same snapshots stored as 2 days and as 180 days: opening plus a
   1-minute grid.

With --backend gpu the batch runs its CUDA kernels (on a GPU machine run it with both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, machine, read_bandwidth
from imbalance import make_block, pandas_grid, run_kernel

BOOK = ("bid_price", "ask_price", "bid_size", "ask_size")
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def kernel_alone(book_path: str, bucket_ns: int) -> tuple[float, int, int]:
    """(seconds, snapshots, bytes): the numba kernel over every instrument-day of the store,
    data already in memory, one block per instrument-day spread over all cores."""
    from gpu_risk import store

    blocks = []
    for inst, days in store.book_days(book_path).items():
        for day in days:
            ds = store.open_day_dataset(book_path, f"{inst}/{day}").load()
            t = ds["time"].values.view(np.int64)
            bucket = t // bucket_ns - t[0] // bucket_ns
            blocks.append(([np.ascontiguousarray(ds[n].values) for n in BOOK], bucket))
    run_kernel(*[a[:100] for a in blocks[0][0]], blocks[0][1][:100], int(blocks[0][1][99]) + 1)

    def one(block):
        arrays, bucket = block
        run_kernel(*arrays, bucket, int(bucket[-1]) + 1)

    with ThreadPoolExecutor(THREADS) as pool:
        seconds = best_of(lambda: list(pool.map(one, blocks)), repeat=3)
    snapshots = sum(b[1].size for b in blocks)
    nbytes = sum(sum(a.nbytes for a in b[0]) + b[1].nbytes for b in blocks)
    return seconds, snapshots, nbytes


def run_family_workflow(book: str, out: Path, scheduler: str, bucket: str, backend: str) -> dict:
    from gpu_risk.workflow import WorkflowConfig, run_workflow

    shutil.rmtree(out, ignore_errors=True)
    cfg = WorkflowConfig(name="imbalance", stores={"book": book}, families=["imbalance"],
                         imbalance={"bucket": bucket}, output=out, scheduler=scheduler, backend=backend)
    t0 = time.perf_counter()
    summary = run_workflow(cfg)
    summary["wall"] = time.perf_counter() - t0
    return summary


def stage_shares(summary: dict) -> dict[str, float]:
    """Wall-clock seconds per part over all days (the run's own breakdown, which adds up
    to the days' wall time)."""
    totals: dict[str, float] = {}
    for st in summary["stages"].values():
        for k, v in st["breakdown"].items():
            totals[k] = totals.get(k, 0.0) + v
    return totals


def print_stages(summary: dict, wall: float) -> None:
    shares = stage_shares(summary)
    parts = ", ".join(f"{k} {v:.2f} s ({v / wall:.0%})" for k, v in shares.items())
    overlap = sum(shares.values()) - wall
    note = f"; {overlap:.2f} s of it overlapped (results written behind the next day)" if overlap > 0.005 else ""
    print(f"    where the time went: {parts}{note}")


def decode_floor(book: Path, k_seconds: float, snapshots: int) -> None:
    """The floor under any reader of this store: every chunk of the book's four arrays
    read and checked (its CRC-32C), and Blosc-decompressed where it is compressed, into
    int32 ticks, nothing else, by gpu_risk's chunk reader on all cores (each thread with
    its kept buffer); against zarr-python reading the same arrays, and the kernel alone."""
    import threading

    import zarr

    from gpu_risk.stores.ticked import ticked_chunks

    groups = [(inst.name, group.name) for inst in sorted(p for p in book.iterdir() if p.is_dir())
              for group in sorted(p for p in inst.iterdir() if p.is_dir())]
    sources = []
    for inst, day in groups:
        for var in BOOK:
            attrs = json.loads((book / inst / day / var / "zarr.json").read_text()).get("attributes", {})
            sources.append(ticked_chunks(book, f"{inst}/{day}", var, attrs))
    kept = threading.local()

    def read_all(source) -> int:
        scratch = getattr(kept, "scratch", None)
        if scratch is None or scratch.size != source.chunk_rows * source.levels:
            scratch = kept.scratch = np.empty(source.chunk_rows * source.levels, dtype=np.int32)
        return sum(source.ticks(i, scratch).size for i in range(source.n_chunks))

    paths = [book / inst / day / var for inst, day in groups for var in BOOK]
    with ThreadPoolExecutor(THREADS) as pool:
        raw_s = best_of(lambda: list(pool.map(read_all, sources)), repeat=3)
        zarr_s = best_of(lambda: list(pool.map(lambda p: zarr.open_array(str(p), mode="r")[...], paths)), repeat=3)
    for label, seconds in (("every chunk read and checked (and decompressed) by gpu_risk's reader", raw_s),
                           ("zarr-python reading the same arrays", zarr_s)):
        print(f"    floor: {label} ({THREADS} threads): {seconds:.3f} s, {snapshots / seconds / 1e6:.1f} M "
              f"snapshots/s = {seconds / k_seconds:.1f}x the kernel alone")


def zarr_to_zarr(args, tmp: Path, bw1: float, bw2: float) -> None:
    from gpu_risk.synth import SynthConfig, synth

    data_dir = Path(args.keep) if args.keep else tmp / "data"
    book = data_dir / "book.zarr"
    if not book.exists():
        synth(SynthConfig(out=str(data_dir), days=args.days, instruments=args.instruments,
                          accounts=100, levels=args.levels, snapshots_per_day=args.snapshots,
                          compression=args.compression))
    from gpu_risk import store

    print(f"book store: {store.store_compression(book)} compression (results stores take the book's), "
          f"{sum(f.stat().st_size for f in book.rglob('*') if f.is_file()) / 1e6:.0f} MB on disk")
    bucket_ns = pd.Timedelta(args.bucket).value
    k_seconds, snapshots, nbytes = kernel_alone(str(book), bucket_ns)
    print(f"kernel alone ({THREADS} threads, {snapshots:,} snapshots in memory, {args.bucket} buckets): "
          f"{k_seconds:.3f} s, {snapshots / k_seconds / 1e6:.1f} M snapshots/s, "
          f"{nbytes / k_seconds / 1e9:.1f} GB/s = {nbytes / k_seconds / bw2:.0%} of the {THREADS}-thread bandwidth")
    decode_floor(book, k_seconds, snapshots)
    for scheduler in ("threads", "local"):
        run_family_workflow(str(book), tmp / "warm.zarr", scheduler, args.bucket, args.backend)  # compile, caches
        summary = run_family_workflow(str(book), tmp / "grid.zarr", scheduler, args.bucket, args.backend)
        # the days' wall time together (a day's writing may overlap the next day's reading)
        seconds = summary["days_wall"]
        print(f"gpu-risk imbalance Zarr to Zarr ({scheduler}, backend {summary['backend']}, "
              f"{len(summary['computed'])} days): {seconds:.2f} s, "
              f"{snapshots / seconds / 1e6:.2f} M snapshots/s; kernel alone / this = {k_seconds / seconds:.3f} "
              f"(1/{seconds / k_seconds:.0f}); {nbytes / seconds / 1e9:.2f} GB/s of uncompressed book = "
              f"{nbytes / seconds / bw2:.1%} of the {THREADS}-thread read bandwidth")
        print_stages(summary, seconds)
    t0 = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "gpu_risk.cli", "imbalance", "--book", str(book),
                          "--out", str(tmp / "cli.zarr"), "--bucket", args.bucket, "--scheduler", "threads",
                          "--backend", args.backend,
                          "--json"], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    days = json.loads(cli.stdout)["days_wall"]
    print(f"the same as a command (new process, threads): {wall:.2f} s wall, of which the days {days:.2f} s "
          f"(the rest: starting Python, importing, loading compiled kernels)")


def api_in_memory(args, bw1: float) -> None:
    import gpu_risk

    n = args.api_snapshots
    bid, ask, bid_size, ask_size, t = make_block(n, args.levels)
    time_ns = t.astype("timedelta64[ns]") + np.datetime64("2026-01-05", "ns")
    ds = xr.Dataset({name: (("time", "level"), a) for name, a in zip(BOOK, (bid, ask, bid_size, ask_size))},
                    coords={"time": time_ns, "level": np.arange(1, args.levels + 1)})
    ds = gpu_risk.validate_book_dataset(ds)
    gpu_risk.imbalance_grid(ds.isel(time=slice(0, 1000)), args.bucket)
    bucket_ns = pd.Timedelta(args.bucket).value
    bucket = t // bucket_ns - t[0] // bucket_ns
    nbytes = 4 * bid.nbytes + t.nbytes
    ratios, api_best, kernel_best = [], np.inf, np.inf
    for _ in range(args.rounds):  # interleaved: this VM's bandwidth moves from minute to minute
        bw = read_bandwidth()
        api = best_of(lambda: gpu_risk.imbalance_grid(ds, args.bucket), repeat=3)
        kernel = best_of(lambda: run_kernel(bid, ask, bid_size, ask_size, bucket, int(bucket[-1]) + 1), repeat=3)
        ratios.append(nbytes / api / bw)
        api_best, kernel_best = min(api_best, api), min(kernel_best, kernel)
    m = min(args.pandas_snapshots, n)
    t_pandas = best_of(lambda: pandas_grid(bid[:m], ask[:m], bid_size[:m], ask_size[:m], t[:m], bucket_ns), repeat=2)
    print(f"imbalance_grid on a book in memory ({n:,} snapshots, {args.bucket}): {api_best:.3f} s, "
          f"{n / api_best / 1e6:.1f} M snapshots/s, {nbytes / api_best / 1e9:.1f} GB/s; of the 1-thread read "
          f"bandwidth measured in the same round: median {np.median(ratios):.0%} (range {min(ratios):.0%}-"
          f"{max(ratios):.0%}); kernel alone on 1 thread {kernel_best:.3f} s "
          f"(API / kernel {api_best / kernel_best:.2f}); pandas ({m:,} snapshots) {m / t_pandas / 1e6:.2f} "
          f"M snapshots/s: API {(n / api_best) / (m / t_pandas):.0f}x")


def demo_workflow(args, tmp: Path) -> None:
    from gpu_risk.synth import SynthConfig, synth
    from gpu_risk.workflow import load_config, run_workflow

    data = tmp / "demo"
    synth(SynthConfig(out=str(data), days=3, instruments=4, accounts=50_000, levels=10,
                      snapshots_per_day=50_000))
    repo = Path(__file__).resolve().parents[1]
    for scheduler in ("local", "threads"):
        out = tmp / f"overnight-{scheduler}.zarr"
        cfg = load_config(repo / "workflows" / "overnight.yaml", {
            "stores": {"book": str(data / "book.zarr"), "positions": str(data / "positions.zarr"),
                       "market": str(data / "market.zarr")},
            "output": str(out), "report": None, "scheduler": scheduler, "backend": args.backend})
        t0 = time.perf_counter()
        summary = run_workflow(cfg)
        wall = time.perf_counter() - t0
        days = summary["days_wall"]
        print(f"overnight workflow, demo data (3 days x 4 instruments x 50,000 snapshots, 50,000 accounts, "
              f"{scheduler}, backend {summary['backend']}): {wall:.1f} s wall, days {days:.1f} s")
        print_stages(summary, days)
        kernels: dict[str, float] = {}
        for st in summary["stages"].values():
            for k, v in st["kernels"].items():
                kernels[k] = kernels.get(k, 0.0) + v
        print("    kernel time by kernel: " + ", ".join(f"{k} {v:.2f} s" for k, v in kernels.items()))


def _open_and_grid(path: Path) -> tuple[float, float]:
    import gpu_risk
    from gpu_risk import store

    t0 = time.perf_counter()
    book = store.open_book(path)
    t_open = time.perf_counter() - t0
    gpu_risk.imbalance_grid(book, "1min").compute(scheduler="threads")
    return t_open, time.perf_counter() - t0


def history(args, tmp: Path) -> None:
    """The same snapshots as 2 days and as 180 days, in both book layouts (day groups, and
    instrument arrays after ``gpu-risk migrate``): open plus a 1-minute grid; then a year of
    50 instruments' small days as instrument arrays: open alone."""
    import shutil

    from gpu_risk.stores.book_arrays import migrate_book
    from gpu_risk.synth import SynthConfig, synth

    total = args.history_snapshots
    cost: dict[tuple[str, int], float] = {}
    for days in (2, 180):
        data = tmp / f"history-{days}"
        synth(SynthConfig(out=str(data), days=days, instruments=2, accounts=10, levels=10,
                          snapshots_per_day=total // (2 * days)))
        arrays = tmp / f"history-{days}-arrays"
        shutil.copytree(data / "book.zarr", arrays)
        t0 = time.perf_counter()
        migrate_book(arrays)
        t_migrate = time.perf_counter() - t0
        for layout, path in (("day groups", data / "book.zarr"), ("instrument arrays", arrays)):
            best = min((_open_and_grid(path) for _ in range(args.repeat)), key=lambda r: r[1])
            cost[layout, days] = best[1]
            print(f"history, {layout}: {total:,} snapshots as {days} days x 2 instruments: open {best[0]:.3f} s, "
                  f"open + 1-minute grid {best[1]:.2f} s ({best[1] / days * 1000 / 2:.1f} ms per instrument-day)"
                  + (f"; migrating took {t_migrate:.2f} s" if layout != "day groups" else ""))
    for layout in ("day groups", "instrument arrays"):
        print(f"history, {layout}: 180 days cost {cost[layout, 180] / cost[layout, 2]:.2f}x what 2 days cost")


def history_year(args, tmp: Path) -> None:
    """A year of 50 instruments' small days (1,000 snapshots each) as instrument arrays:
    open alone."""
    import numpy as np
    import xarray as xr
    import zarr

    from gpu_risk import store
    from gpu_risk.stores.book_arrays import BOOK_LAYOUT_ATTR, INSTRUMENT_ARRAYS

    year = tmp / "year.zarr"
    store.init_store(year, "book")


    zarr.open_group(str(year), mode="r+").attrs[BOOK_LAYOUT_ATTR] = INSTRUMENT_ARRAYS
    rng = np.random.default_rng(0)
    per_day, levels = 1_000, 5
    n = 365 * per_day
    t_write = time.perf_counter()
    for k in range(args.history_instruments):
        time_ns = (np.datetime64("2025-01-01", "ns") + np.repeat(np.arange(365), per_day).astype("timedelta64[D]")
                   + np.tile(np.arange(per_day) * 86_000_000_000 // per_day, 365).astype("timedelta64[ns]"))
        mid = 100_000 + np.cumsum(rng.integers(-1, 2, n))  # in ticks: stays far above zero
        ladder = np.arange(levels)
        book = xr.Dataset({"bid_price": (("time", "level"), (mid[:, None] - 1 - ladder) * 0.5),
                           "ask_price": (("time", "level"), (mid[:, None] + 1 + ladder) * 0.5),
                           "bid_size": (("time", "level"), rng.integers(1, 100, (n, levels)) * 0.001),
                           "ask_size": (("time", "level"), rng.integers(1, 100, (n, levels)) * 0.001)},
                          coords={"time": time_ns, "level": np.arange(1, levels + 1)})
        store.write_book(book, year, f"INST{k:02d}")
    t_write = time.perf_counter() - t_write
    opens = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        tree = store.open_book(year)
        opens.append(time.perf_counter() - t0)
    days = sum(len(tree[c].attrs["days"]) for c in tree.children)
    print(f"history: a year x {args.history_instruments} instruments of small days ({days:,} instrument-days, "
          f"{days * per_day:,} snapshots) as instrument arrays: open {min(opens):.2f} s "
          f"(written in {t_write:.1f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snapshots", type=int, default=1_000_000, help="per instrument and day")
    p.add_argument("--days", type=int, default=2)
    p.add_argument("--instruments", type=int, default=2)
    p.add_argument("--levels", type=int, default=10)
    p.add_argument("--bucket", default="1s")
    p.add_argument("--api-snapshots", type=int, default=2_000_000)
    p.add_argument("--pandas-snapshots", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--demo", action="store_true", help="also the overnight workflow on the demo data")
    p.add_argument("--history", action="store_true", help="also 2 days against 180 days")
    p.add_argument("--history-snapshots", type=int, default=1_800_000)
    p.add_argument("--history-instruments", type=int, default=50)
    p.add_argument("--history-year", action="store_true", help="only the year of small days (part of --history)")
    p.add_argument("--repeat", type=int, default=3, help="history: best of this many runs")
    p.add_argument("--keep", help="directory for the synthetic store (reused when present)")
    p.add_argument("--compression", default="lz4", choices=["lz4", "none"],
                   help="the synthetic book store's chunks (and so the results')")
    p.add_argument("--skip", nargs="*", default=[], choices=["zarr", "api"],
                   help="leave out the Zarr-to-Zarr or the in-memory API part")
    p.add_argument("--backend", default="cpu", help="cpu | gpu | auto (the batch runs; the kernel-alone "
                   "and API lines are the CPU kernel's)")
    args = p.parse_args()
    print(f"machine: {machine()}")
    bw1, bw2 = read_bandwidth(threads=1), read_bandwidth(threads=THREADS)
    print(f"memory read bandwidth (numba streaming sum, 512 MiB): 1 thread {bw1 / 1e9:.1f} GB/s, "
          f"{THREADS} threads {bw2 / 1e9:.1f} GB/s")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_risk_batch_"))
    try:
        if "zarr" not in args.skip:
            zarr_to_zarr(args, tmp, bw1, bw2)
        if "api" not in args.skip:
            api_in_memory(args, bw1)
        if args.demo:
            demo_workflow(args, tmp)
        if args.history:
            history(args, tmp)
        if args.history or args.history_year:
            history_year(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
