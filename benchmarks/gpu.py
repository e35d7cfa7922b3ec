"""GPU figures in one run: the device's own memory bandwidth, each CUDA kernel against it, and
the public API on the GPU against the same API on every CPU core of the same machine.

    python benchmarks/gpu.py [--snapshots 10000000 --accounts 1000000]

Prints, on a machine with CuPy and a CUDA device:
- device memory bandwidth, measured now: a read-only reduction over 4 GiB, and a
  device-to-device copy counting bytes read plus written;
- the imbalance kernel on a block in device memory (no transfers): snapshots/s, GB/s and
  the fraction of the device's read bandwidth, and the numba kernel on one CPU thread;
- liquidation and stress aggregates through the public API on accounts held in host
  memory (chunks moved to the GPU and results back inside the graph): accounts/s and
  evaluations/s on the GPU and on every CPU core (Dask threads), and the largest relative
  difference between the two results.
Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, machine, synthetic_as_of_date

from gpu_risk.backend import gpu_available, to_backend
from gpu_risk.cluster import dask_scheduler


def device_timer(cp, fn, repeat=10) -> float:
    """Median seconds of ``fn`` on the device, timed with CUDA events after a warm-up."""
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


def device_bandwidth(cp, nbytes=4 << 30) -> tuple[float, float]:
    """(read bytes/s of a sum, read+written bytes/s of a copy) over ``nbytes`` of float64."""
    a = cp.random.random(nbytes // 8)
    b = cp.empty_like(a)
    out = cp.empty((), dtype=a.dtype)
    read = device_timer(cp, lambda: cp.sum(a, out=out))
    copy = device_timer(cp, lambda: cp.copyto(b, a))
    a = b = None
    cp.get_default_memory_pool().free_all_blocks()
    return nbytes / read, 2 * nbytes / copy


def imbalance(cp, snapshots, levels, read_bw):
    from gpu_risk.kernels.imbalance import imbalance_block_gpu, n_columns
    from imbalance import BANDS, make_block, run_kernel

    bid, ask, bid_size, ask_size, time_ns = make_block(snapshots, levels)
    bucket = time_ns // 10**9 - time_ns[0] // 10**9
    n_out = int(bucket[-1]) + 1
    nbytes = 4 * bid.nbytes + time_ns.nbytes
    cpu = run_kernel(bid[:1000], ask[:1000], bid_size[:1000], ask_size[:1000], bucket[:1000],
                     int(bucket[999]) + 1)
    t_cpu = best_of(lambda: run_kernel(bid, ask, bid_size, ask_size, bucket, n_out), repeat=3)
    cpu = run_kernel(bid, ask, bid_size, ask_size, bucket, n_out)
    d = [cp.asarray(a) for a in (bid, ask, bid_size, ask_size)]
    nan = cp.full(levels, cp.nan)
    db, dbands = cp.asarray(bucket), cp.asarray(BANDS)
    out = cp.full((n_out, n_columns(levels, BANDS.size)), cp.nan)
    t_gpu = device_timer(cp, lambda: imbalance_block_gpu(*d, nan, nan, nan, nan, False, db, dbands, out))
    diff = _rel_diff(out.get(), cpu)
    print(f"imbalance kernel, {snapshots:,} snapshots x {levels} levels, 1 s buckets, device memory: "
          f"{snapshots / t_gpu / 1e6:,.0f} M snapshots/s, {nbytes / t_gpu / 1e9:,.0f} GB/s = "
          f"{nbytes / t_gpu / read_bw:.0%} of the device read bandwidth; numba, 1 CPU thread: "
          f"{snapshots / t_cpu / 1e6:.1f} M snapshots/s ({t_cpu / t_gpu:,.0f}x); "
          f"largest relative difference {diff:.1e}")


def _rel_diff(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    same_nan = np.isnan(a) == np.isnan(b)
    if not same_nan.all():
        return np.inf
    ok = ~np.isnan(a) & np.isfinite(b)
    if (a[~ok & ~np.isnan(a)] != b[~ok & ~np.isnan(a)]).any():  # infinities must agree exactly
        return np.inf
    scale = np.maximum(np.abs(b[ok]), 1e-300)
    return float((np.abs(a[ok] - b[ok]) / scale).max()) if ok.any() else 0.0


def accounts(cp, n_accounts, chunk, cpu_chunk):
    from gpu_risk.liquidation import liquidation
    from gpu_risk.stress import stress_surface

    price = np.round(np.linspace(-0.5, 0.5, 21), 10)
    vol = np.round(np.linspace(-0.2, 0.3, 11), 10)
    with synthetic_as_of_date(n_accounts, "gpu_risk_gpu_bench_") as (market, positions):
        held = positions.compute()
        slots = market.sizes["instrument"]
        names = ["accounts_liquidated", "shortfall", "worst_collateral_ratio"]
        runs = {}
        for backend in ("cpu", "gpu"):
            # the GPU gets large chunks; the CPU chunks small enough for every core to get several
            size = chunk if backend == "gpu" else cpu_chunk
            data = to_backend(held.chunk({"account": size}, token=f"held-{size}"), backend)
            liq = lambda: liquidation(data, market, validate=False).compute()  # noqa: E731
            agg = lambda: stress_surface(data, market, price, vol_shocks=vol,  # noqa: E731
                                         validate=False)[names].compute()
            with dask_scheduler("threads") as where:
                liq(), agg()  # compile / load the kernels outside the timings
                t_liq = best_of(liq, repeat=2)
                t_agg = best_of(agg, repeat=2)
                runs[backend] = (liq(), agg(), t_liq, t_agg, where)
        (l_cpu, a_cpu, tl_cpu, ta_cpu, where), (l_gpu, a_gpu, tl_gpu, ta_gpu, _) = runs["cpu"], runs["gpu"]
        # the stress kernel alone on one chunk already in device memory (no transfers, no Dask)
        from gpu_risk.liquidation import market_arrays
        from gpu_risk.model import in_market_order
        from gpu_risk.stress import _run

        pos = in_market_order(held.isel(account=slice(0, chunk)), market)
        n = pos.sizes["account"]
        inputs = [cp.asarray(pos[v].values) for v in ("balance", "position", "entry_price", "isolated_margin")]
        inputs += [cp.asarray((pos.margin_mode == "isolated").values), cp.zeros(n, dtype=bool)]
        m = market_arrays(market)
        t_kernel = device_timer(cp, lambda: _run(inputs, m, price, vol, True, False))
        cells = n_accounts * slots * price.size * vol.size
        print(f"liquidation (all outputs), {n_accounts:,} accounts x {slots} instruments from host memory "
              f"({chunk:,}-account chunks on the GPU, {cpu_chunk:,} on the CPU): "
              f"GPU {n_accounts / tl_gpu / 1e6:.2f} M accounts/s; "
              f"CPU ({where.split(' at ')[0]}) {n_accounts / tl_cpu / 1e6:.2f} M accounts/s; "
              f"GPU/CPU {tl_cpu / tl_gpu:.1f}x; largest relative difference: "
              + ", ".join(f"{v} {_rel_diff(l_gpu[v].values, l_cpu[v].values):.1e}" for v in
                         ("collateral_ratio", "liquidation_price", "liquidation_shock_down", "liquidation_map")))
        print(f"stress aggregates, {price.size} x {vol.size} scenarios: GPU {cells / ta_gpu / 1e9:.2f} e9 "
              f"evaluations/s; CPU {cells / ta_cpu / 1e9:.2f} e9/s; GPU/CPU {ta_cpu / ta_gpu:.1f}x; largest "
              "relative difference: "
              + ", ".join(f"{v} {_rel_diff(a_gpu[v].values, a_cpu[v].values):.1e}" for v in names))
        print(f"  the stress kernel alone, {n:,} accounts in device memory (aggregates reduced there): "
              f"{n * slots * price.size * vol.size / t_kernel / 1e9:.2f} e9 evaluations/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshots", type=int, default=10_000_000)
    ap.add_argument("--levels", type=int, default=10)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=262_144, help="accounts per chunk on the GPU")
    ap.add_argument("--cpu-chunk", type=int, default=32_768, help="accounts per chunk on the CPU")
    args = ap.parse_args()
    print(f"machine: {machine()}; pandas {pd.__version__}")
    ok, why = gpu_available()
    if not ok:
        print(f"no GPU: {why}")
        return
    import cupy as cp

    print(f"GPU: {why}; CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}")
    read_bw, copy_bw = device_bandwidth(cp)
    print(f"device memory bandwidth, measured now: read (sum of 4 GiB) {read_bw / 1e9:,.0f} GB/s; "
          f"copy {copy_bw / 1e9:,.0f} GB/s counting bytes read + written")
    t0 = time.perf_counter()
    imbalance(cp, args.snapshots, args.levels, read_bw)
    accounts(cp, args.accounts, args.chunk, args.cpu_chunk)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
