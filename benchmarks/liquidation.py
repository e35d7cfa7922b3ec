"""Liquidation thresholds for 1M accounts x 8 instruments on this machine's cores.

    python benchmarks/liquidation.py [--accounts 1000000] [--numpy-accounts 20000]

Prints accounts/s of ``gpu_risk.liquidation`` (numba kernel on Dask, every core) on a
synthetic as-of date of perpetuals and options, and of a straightforward vectorised NumPy
implementation of the same liquidation prices (perpetual-only accounts, where it has a
closed form per bracket; it scans every bracket of every instrument for every account),
and the ratio. Also the single-thread kernel rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, synthetic_as_of_date

from gpu_risk.cluster import dask_scheduler
from gpu_risk.liquidation import liquidation, market_arrays


def numpy_liquidation_prices(balance, position, entry, m):
    """Vectorised NumPy, cross accounts of linear perpetuals with USDT collateral only:
    for each instrument and bracket, the closed-form root with everything else fixed, kept
    where it falls in its bracket; the root nearest the mark wins."""
    price, haircut, mark = m.price, m.haircut, m.mark
    floor, mmr, amount = m.floor, m.mmr, m.amount
    wallet = (np.where(balance > 0, balance * price * (1 - haircut), balance * price)).sum(axis=1)
    pnl = position * (mark - entry)
    pnl = np.where(position != 0, pnl, 0.0)
    notional = np.abs(position) * mark
    k = (floor[None, :, :] <= notional[:, :, None]).sum(axis=2) - 1
    mm = notional * np.take_along_axis(mmr[None].repeat(len(position), 0), k[..., None], 2)[..., 0] \
        - np.take_along_axis(amount[None].repeat(len(position), 0), k[..., None], 2)[..., 0]
    mm = np.where(position != 0, mm, 0.0)
    out = np.full(position.shape, np.nan)
    for i in range(position.shape[1]):
        q = position[:, i]
        rest = wallet + pnl.sum(1) - pnl[:, i] - (mm.sum(1) - mm[:, i])
        best = np.full(len(q), np.nan)
        for b in range(floor.shape[1]):
            if np.isnan(floor[i, b]):
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                p = (rest - q * entry[:, i] + amount[i, b]) / (np.abs(q) * mmr[i, b] - q)
            hi = floor[i, b + 1] if b + 1 < floor.shape[1] and not np.isnan(floor[i, b + 1]) else np.inf
            ok = (q != 0) & (p > 0) & (np.abs(q) * p >= floor[i, b]) & (np.abs(q) * p < hi)
            closer = ok & (np.isnan(best) | (np.abs(p - mark[i]) < np.abs(best - mark[i])))
            best = np.where(closer, p, best)
        out[:, i] = best
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--accounts", type=int, default=1_000_000)
    p.add_argument("--numpy-accounts", type=int, default=200_000)
    args = p.parse_args()
    print(f"machine: {machine()}")
    with synthetic_as_of_date(args.accounts, "gpu_risk_liq_") as (market, positions):
        n_inst = market.sizes["instrument"]
        with dask_scheduler("local") as where:
            # the workers load (or, without numba's cache, compile) the kernel outside the timing
            liquidation(positions.isel(account=slice(0, 100)), market, validate=False).compute()
            t0 = time.perf_counter()
            result = liquidation(positions, market, validate=False).compute()
            seconds = time.perf_counter() - t0
        print(f"gpu_risk.liquidation, {args.accounts:,} accounts x {n_inst} instruments (4 perpetuals, "
              f"4 options; cross, isolated, lending, options), {where.split(' at ')[0]}: {seconds:.1f} s = "
              f"{args.accounts / seconds:,.0f} accounts/s")
        # the same kernel, one thread, on perpetual-only cross accounts vs NumPy
        pos = positions.load()
        kind = market.kind.values
        m = market_arrays(market)
        perps_only = (pos.position.values[:, kind == "option"] == 0).all(1) & (pos.margin_mode.values == "cross") \
            & (pos.balance.values[:, 1:] == 0).all(1) & (pos.position.values[:, kind == "inverse"] == 0).all(1)
        rows = np.flatnonzero(perps_only)[: args.numpy_accounts]
        sub = pos.isel(account=rows)
        with dask_scheduler("sync"):
            t0 = time.perf_counter()
            kernel = liquidation(sub, market, validate=False)
            t_kernel = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = numpy_liquidation_prices(sub.balance.values, sub.position.values, sub.entry_price.values, m)
        t_numpy = time.perf_counter() - t0
        linear = kind == "linear"
        np.testing.assert_allclose(kernel.liquidation_price.values[:, linear], ref[:, linear], rtol=1e-9)
        print(f"perpetual-only cross accounts ({rows.size:,}), one thread: kernel (all outputs: ratio, "
              f"{n_inst} liquidation prices, 2 shocks) {rows.size / t_kernel:,.0f} accounts/s; NumPy "
              f"(liquidation prices only) {rows.size / t_numpy:,.0f} accounts/s; ratio "
              f"{t_numpy / t_kernel:.1f}x; liquidation prices agree to 1e-9")
        print(f"collateral ratio < 1 (liquidatable now): {int((result.collateral_ratio < 1).sum()):,} accounts")
    print(f"first call in a fresh process without numba's on-disk cache (compiling the kernel): "
          f"{first_call_seconds():.1f} s")


def first_call_seconds() -> float:
    """Seconds of the first ``liquidation`` call in a new process whose numba cache is empty."""
    import subprocess
    import tempfile

    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from _common import synthetic_as_of_date\n"
        "from gpu_risk.liquidation import liquidation\n"
        "with synthetic_as_of_date(100, 'gpu_risk_first_') as (market, positions):\n"
        "    positions = positions.compute(); t0 = time.perf_counter()\n"
        "    liquidation(positions, market, validate=False)\n"
        "    print(time.perf_counter() - t0)\n")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent)], env=env,
                              capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


if __name__ == "__main__":
    main()
