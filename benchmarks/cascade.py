"""Liquidation cascades on a multi-day synthetic store, on this machine's cores.

    python benchmarks/cascade.py [--days 3] [--accounts 100000] [--every 10s] [--sample 100]

Writes a synthetic store (4 perpetuals, 10 levels), then prints, in one run:
- end to end: ``gpu_risk.cascade`` over the whole multi-day book store (Zarr -> as-of
  gather -> numba kernel on Dask, every core), cascades/s;
- the kernel alone on one thread, on the gathered books in memory, cascades/s, and the book
  bytes it reads per second against this machine's measured read bandwidth;
- the brute-force simulator of the tests (plain Python, positions closed wave by wave,
  levels walked one by one) and a straightforward NumPy version (the same sorted tables,
  ``np.searchsorted`` and ``np.cumsum`` per cascade) on a sample, cascades/s, and the ratios;
- the CUDA kernel where a GPU is visible.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import best_of, machine, read_bandwidth
from cascade_reference import brute_force_cascade
from gpu_risk.kernels.cascade import cascade_cpu

from gpu_risk import cascade, liquidation, store
from gpu_risk.backend import gpu_available
from gpu_risk.cascade import position_tables
from gpu_risk.cluster import dask_scheduler
from gpu_risk.model import notional_at_price
from gpu_risk.synth import SynthConfig, synth

SHOCKS = np.array([-0.2, -0.15, -0.1, -0.07, -0.05, -0.03, -0.02, -0.01,
                   0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2])
EXTRAPOLATION = 0.002


def numpy_cascade(bid_price, bid_size, ask_price, ask_size, s0, long_t, short_t, x):
    """The straightforward NumPy version of one cascade: sorted tables, searchsorted, cumsum."""
    mid = 0.5 * (bid_price[0] + ask_price[0])
    factor = 1 + s0
    selling = s0 < 0
    side = -1.0 if selling else 1.0
    price, size = (bid_price, bid_size) if selling else (ask_price, ask_size)
    table = long_t if selling else short_t
    keys = table[0, :-1]
    ok = (size > 0) & np.isfinite(price)
    moved, depth = price[ok] * factor, np.cumsum(size[ok])
    start = p = mid * factor
    closed = rounds = 0
    exhausted = False
    while True:
        n = int(np.searchsorted(keys, side * p, side="right"))
        if n <= closed:
            break
        closed, rounds = n, rounds + 1
        volume = table[1, n]
        k = int(np.searchsorted(depth, volume, side="left"))
        if k < depth.size:
            p = moved[k]
            continue
        exhausted = True
        p = max(moved[-1] + side * ((volume - depth[-1]) / depth[-1] * x * start), 0.0)
    return p, table[2, closed], rounds, exhausted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--snapshots", type=int, default=50_000, help="per instrument and day")
    ap.add_argument("--every", default="10s")
    ap.add_argument("--sample", type=int, default=100, help="cascades for the Python baselines")
    ap.add_argument("--scheduler", default="threads")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    bandwidth = read_bandwidth()
    print(f"memory read bandwidth (1 thread, measured now): {bandwidth / 1e9:.1f} GB/s")
    tmp = Path(tempfile.mkdtemp(prefix="bench_cascade_"))
    try:
        t0 = time.perf_counter()
        data = synth(SynthConfig(out=str(tmp), days=args.days, instruments=4, accounts=args.accounts,
                                 levels=10, snapshots_per_day=args.snapshots))
        print(f"synthetic store: {args.days} days x 4 perpetuals x {args.snapshots:,} snapshots/day, "
              f"{args.accounts:,} accounts ({time.perf_counter() - t0:.1f} s to write)")
        market = store.open_market(data["market"], data["days"][0])
        positions = store.open_positions(data["positions"], data["days"][0], market=market)
        book = store.open_book(data["book"])
        with dask_scheduler(args.scheduler) as where:
            t0 = time.perf_counter()
            liq = liquidation(positions, market).compute()
            t_liq = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = cascade(book, positions, market, args.every, SHOCKS, liquidation=liq,
                          depth_extrapolation=EXTRAPOLATION).compute()
            t_end = time.perf_counter() - t0
        n = out.final_price.size
        print(f"scheduler: {where}")
        print(f"liquidation prices (input to the cascades): {t_liq:.1f} s")
        print(f"end to end, Zarr store -> cascades: {n:,} cascades ({out.sizes['instrument']} instruments x "
              f"{out.sizes['time']:,} times x {SHOCKS.size} shocks) in {t_end:.2f} s = {n / t_end:,.0f} cascades/s; "
              f"median rounds {float(out.rounds.median()):.0f}, max {int(out.rounds.max())}")

        # kernel alone, one thread, on the gathered books of one instrument in memory
        inst = "BTCUSDT"
        ds = book[inst].to_dataset()
        t = ds.time.values
        rows = np.searchsorted(t, out.time.values, side="right") - 1
        rows = rows[rows >= 0]
        arrays = [np.ascontiguousarray(ds[v].values[rows]) for v in ("bid_price", "bid_size", "ask_price", "ask_size")]
        i = list(market.instrument.values.astype(str)).index(inst)
        q = positions.position.sel(instrument=inst).values
        lp = liq.liquidation_price.sel(instrument=inst).values
        notional = notional_at_price(positions.position.values, liq.liquidation_price.values, market)[:, i]
        long_t, short_t = position_tables(q, lp, notional)
        tables = [long_t[0, :-1].copy(), long_t[1], long_t[2], short_t[0, :-1].copy(), short_t[1], short_t[2]]
        res = np.empty((rows.size, SHOCKS.size, 4))
        cascade_cpu(*(a[:2] for a in arrays), SHOCKS, *tables, EXTRAPOLATION, res[:2])  # compile
        t_kernel = best_of(lambda: cascade_cpu(*arrays, SHOCKS, *tables, EXTRAPOLATION, res))
        n_k = res.shape[0] * res.shape[1]
        book_bytes = sum(a.nbytes for a in arrays)
        print(f"kernel, 1 thread, {inst}: {n_k:,} cascades in {t_kernel * 1e3:.1f} ms = "
              f"{n_k / t_kernel:,.0f} cascades/s; book read {book_bytes / t_kernel / 1e9:.2f} GB/s = "
              f"{book_bytes / t_kernel / bandwidth:.1%} of bandwidth "
              f"(bound by the dependent binary searches over {q.size:,} positions, not by memory)")

        # the Python baselines on a sample of the same cascades
        rng = np.random.default_rng(0)
        picks = [(int(r), int(s)) for r, s in zip(rng.integers(rows.size, size=args.sample),
                                                   rng.integers(SHOCKS.size, size=args.sample))]
        t0 = time.perf_counter()
        for r, s in picks:
            got = brute_force_cascade(*(a[r] for a in arrays), SHOCKS[s], q, lp, notional, EXTRAPOLATION)
            np.testing.assert_allclose(got[0], res[r, s, 0], rtol=1e-12)
            assert got[2] == res[r, s, 2], (r, s)
        t_brute = (time.perf_counter() - t0) / len(picks)
        t0 = time.perf_counter()
        for r, s in picks:
            got = numpy_cascade(*(a[r] for a in arrays), SHOCKS[s], long_t, short_t, EXTRAPOLATION)
            np.testing.assert_allclose(got[0], res[r, s, 0], rtol=1e-12)
        t_numpy = (time.perf_counter() - t0) / len(picks)
        print(f"brute-force simulator (plain Python, SPEC's rounds): {1 / t_brute:,.1f} cascades/s -> "
              f"kernel is {t_brute * n_k / t_kernel:,.0f}x, end to end {t_brute * n / t_end:,.0f}x")
        print(f"NumPy per cascade (sorted tables, searchsorted): {1 / t_numpy:,.0f} cascades/s -> "
              f"kernel is {t_numpy * n_k / t_kernel:,.0f}x, end to end {t_numpy * n / t_end:,.0f}x")
        ok, why = gpu_available()
        if ok:
            import cupy as cp
            from gpu_risk.kernels.cascade import cascade_gpu

            dev = [cp.asarray(a) for a in arrays]
            out_d = cp.empty((rows.size, SHOCKS.size, 4))
            cascade_gpu(*dev, SHOCKS, *tables, EXTRAPOLATION, out_d)
            cp.cuda.Device().synchronize()
            t_gpu = best_of(lambda: (cascade_gpu(*dev, SHOCKS, *tables, EXTRAPOLATION, out_d),
                                     cp.cuda.Device().synchronize()))
            agree = np.allclose(out_d.get(), res, rtol=1e-9, equal_nan=True)
            print(f"GPU kernel ({why}): {n_k / t_gpu:,.0f} cascades/s = {t_kernel / t_gpu:,.0f}x one CPU thread; "
                  f"agrees with CPU to 1e-9: {agree}")
        else:
            print(f"GPU kernel: not run ({why})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
