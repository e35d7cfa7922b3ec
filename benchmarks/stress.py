"""Stress surfaces: position-scenario evaluations per second for 1M accounts x 8 positions x
(21 x 11) scenarios on this machine's cores, against a vectorised NumPy implementation.

    python benchmarks/stress.py [--accounts 1000000] [--numpy-accounts 100000]

Counts every cell of the grid (accounts x 8 instrument slots x 21 price shocks x 11 vol
shocks), as the issue asks; work shared along the vol axis (accounts without options) is
allowed. Reports perpetual-only portfolios and portfolios with options separately (option
revaluations/s), the vectorised NumPy baseline on perpetual-only portfolios, the ratio,
and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, synthetic_as_of_date  # noqa: E402

from gpu_risk.cluster import dask_scheduler  # noqa: E402
from gpu_risk.liquidation import market_arrays  # noqa: E402
from gpu_risk.stress import stress_surface  # noqa: E402

PRICE = np.round(np.linspace(-0.5, 0.5, 21), 10)
VOL = np.round(np.linspace(-0.2, 0.3, 11), 10)


def numpy_surface(balance, position, entry, m):
    """Vectorised NumPy for perpetual portfolios (linear and inverse, cross): one pass per
    price shock over all accounts, brackets by searchsorted; the vol axis is a broadcast."""
    price, haircut, beta = m["price"], m["haircut"], m["beta"]
    mark, kind, und = m["mark"], m["kind"], m["underlying"]
    floor, mmr, amount = m["floor"], m["mmr"], m["amount"]
    out = np.empty((len(balance), PRICE.size, VOL.size))
    for j, s in enumerate(PRICE):
        p = price * (1 + beta * s)
        mk = mark * (1 + beta[und] * s)
        c = np.where(balance > 0, balance * p * (1 - haircut), 0).sum(1)
        r = np.where(balance < 0, -balance * p, 0).sum(1)
        lin = kind == 0
        inv = kind == 1
        c += (np.where(position[:, lin] != 0, position[:, lin] * (mk[lin] - entry[:, lin]), 0)).sum(1)
        c += (np.where(position[:, inv] != 0, position[:, inv] * (1 / entry[:, inv] - 1 / mk[inv]) * p[und[inv]], 0)).sum(1)
        notional = np.where(lin, np.abs(position) * mk, np.abs(position))
        for i in np.flatnonzero(lin | inv):
            f = floor[i][np.isfinite(floor[i])]
            k = np.searchsorted(f, notional[:, i], side="right") - 1
            r += np.where(position[:, i] != 0, notional[:, i] * mmr[i, k] - amount[i, k], 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, j, :] = np.where(r > 0, c / r, np.inf)[:, None]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--numpy-accounts", type=int, default=100_000)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with synthetic_as_of_date(args.accounts, "gpu_risk_stress_") as (market, positions):
        kind = market.kind.values
        held = positions.load()
        has_option = (held.position.values[:, kind == "option"] != 0).any(1)
        slots = market.sizes["instrument"]
        cells = args.accounts * slots * PRICE.size * VOL.size
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with dask_scheduler("local", memory_limit="6GB") as where:
            t0 = time.perf_counter()
            surface = stress_surface(positions, market, PRICE, vol_shocks=VOL, validate=False)
            agg = surface[["accounts_liquidated", "shortfall", "span_requirement"]].compute()
            seconds = time.perf_counter() - t0
            from distributed import get_client

            worker_peaks = get_client().run(
                lambda: __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024)
        print(f"stress_surface, {args.accounts:,} accounts x {slots} instrument slots x {PRICE.size} x "
              f"{VOL.size} scenarios ({has_option.mean():.0%} of accounts hold options), "
              f"{where.split(' at ')[0]}: {seconds:.1f} s = {cells / seconds / 1e9:.2f} e9 position-"
              f"scenario evaluations/s (every cell counted), plus SPAN; worst shortfall "
              f"{float(agg.shortfall.max()):,.0f} USD; peak RSS per worker "
              f"{', '.join(f'{v:,.0f}' for v in worker_peaks.values())} MiB")
        # one thread, same kernel: perpetual-only accounts vs options accounts, and NumPy
        m = market_arrays(market)
        for label, mask in (("perpetual-only cross", (~has_option) & (held.margin_mode.values == "cross")),
                            ("with options", has_option)):
            rows = np.flatnonzero(mask)[: args.numpy_accounts]
            sub = held.isel(account=rows)
            with dask_scheduler("sync"):
                t0 = time.perf_counter()
                got = stress_surface(sub, market, PRICE, vol_shocks=VOL, validate=False)
                t_kernel = time.perf_counter() - t0
            rate = rows.size * slots * PRICE.size * VOL.size / t_kernel
            extra = ""
            if label.startswith("with"):
                n_opt = int((sub.position.values[:, kind == "option"] != 0).sum())
                extra = f"; {n_opt * PRICE.size * VOL.size / t_kernel / 1e6:.1f} M option revaluations/s"
            print(f"{label} ({rows.size:,} accounts), one thread: {rate / 1e9:.3f} e9 evaluations/s{extra}")
            if label.startswith("perpetual"):
                t0 = time.perf_counter()
                ref = numpy_surface(sub.balance.values, sub.position.values, sub.entry_price.values, m)
                t_numpy = time.perf_counter() - t0
                np.testing.assert_allclose(got.collateral_ratio.values, ref, rtol=1e-9, atol=1e-12)
                print(f"  vectorised NumPy on the same accounts: "
                      f"{rows.size * slots * PRICE.size * VOL.size / t_numpy / 1e9:.3f} e9 evaluations/s; "
                      f"kernel / NumPy = {t_numpy / t_kernel:.1f}x (ratios agree to 1e-9, or 1e-12 absolute where C cancels to ~0)")
        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB "
              f"(at start {rss0:,.0f} MiB; most of it is the one-thread comparisons above)")


if __name__ == "__main__":
    main()
