"""Stress surfaces: position-scenario evaluations per second for 1M accounts x 8 positions x
(21 x 11) scenarios on this machine's cores, against a vectorised NumPy implementation.

    python benchmarks/stress.py [--accounts 1000000] [--numpy-accounts 300000]

Counts every cell of the grid (accounts x 8 instrument slots x 21 price shocks x 11 vol
shocks), as the issue asks; work shared along the vol axis (accounts without options) is
allowed. Reports perpetual-only portfolios and portfolios with options separately (option
revaluations/s), the vectorised NumPy baseline on perpetual-only portfolios, the ratio,
and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, synthetic_as_of_date

from gpu_risk import store
from gpu_risk.backend import gpu_available
from gpu_risk.cluster import dask_scheduler
from gpu_risk.liquidation import market_arrays
from gpu_risk.stress import stress_surface

PRICE = np.round(np.linspace(-0.5, 0.5, 21), 10)
VOL = np.round(np.linspace(-0.2, 0.3, 11), 10)


def numpy_surface(balance, position, entry, m):
    """Vectorised NumPy for perpetual portfolios (linear and inverse, cross), the same metric
    as the engine: per price shock, every account's ratio C/R and full value N in one pass
    over all accounts (brackets by searchsorted), then the count of ratios < 1, the shortfall
    and each account's worst ratio; the vol axis does not move perpetuals, so each shock's
    aggregates stand for every vol column. Returns (ratio (A, S), accounts liquidated (S,),
    shortfall (S,), worst (A,))."""
    price, haircut, beta = m.price, m.haircut, m.beta
    mark, kind, und = m.mark, m.kind, m.underlying
    floor, mmr, amount = m.floor, m.mmr, m.amount
    lin = kind == 0
    inv = kind == 1
    ratio = np.empty((len(balance), PRICE.size))
    liquidated = np.empty(PRICE.size)
    shortfall = np.empty(PRICE.size)
    for j, s in enumerate(PRICE):
        p = price * (1 + beta * s)
        mk = mark * (1 + beta[und] * s)
        c = np.where(balance > 0, balance * p * (1 - haircut), 0).sum(1)
        r = np.where(balance < 0, -balance * p, 0).sum(1)
        pnl = (np.where(position[:, lin] != 0, position[:, lin] * (mk[lin] - entry[:, lin]), 0)).sum(1)
        pnl += (np.where(position[:, inv] != 0,
                         position[:, inv] * (1 / entry[:, inv] - 1 / mk[inv]) * p[und[inv]], 0)).sum(1)
        c += pnl
        notional = np.where(lin, np.abs(position) * mk, np.abs(position))
        for i in np.flatnonzero(lin | inv):
            f = floor[i][np.isfinite(floor[i])]
            k = np.searchsorted(f, notional[:, i], side="right") - 1
            r += np.where(position[:, i] != 0, notional[:, i] * mmr[i, k] - amount[i, k], 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[:, j] = np.where(r > 0, c / r, np.inf)
        value = (balance * p).sum(1) + pnl
        liquidated[j] = (ratio[:, j] < 1).sum()
        shortfall[j] = np.clip(-value, 0, None).sum()
    return ratio, liquidated, shortfall, ratio.min(1)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


AGGREGATES = ["accounts_liquidated", "shortfall", "worst_collateral_ratio"]


def _aggregates(positions, market, chunk=None, names=AGGREGATES):
    """The surface aggregates and the worst ratio per account (``names``), lazily from
    ``chunk``-account input chunks, or from the store's own chunks."""
    lazy = positions if chunk is None else positions.chunk({"account": chunk})
    surface = stress_surface(lazy, market, PRICE, vol_shocks=VOL, validate=False)
    return surface[names].compute()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--numpy-accounts", type=int, default=300_000)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with synthetic_as_of_date(args.accounts, "gpu_risk_stress_") as (market, positions):
        kind = market.kind.values
        held = positions.compute()  # (not .load(): that would load `positions` in place too)
        has_option = (held.position.values[:, kind == "option"] != 0).any(1)
        slots = market.sizes["instrument"]
        grid = PRICE.size * VOL.size
        _aggregates(held.isel(account=slice(0, 1000)), market, 1000)  # compile outside the timings
        # 1. every account, read from the Zarr store by a LocalCluster of this machine's cores
        with dask_scheduler("local", memory_limit="6GB") as where:
            _aggregates(positions.isel(account=slice(0, 1000)), market,
                        names=AGGREGATES + ["span_requirement"])  # the workers load the kernels
            times = {}
            for label, names in (("surface aggregates", AGGREGATES), ("SPAN", ["span_requirement"])):
                t0 = time.perf_counter()
                agg = _aggregates(positions, market, names=names)
                times[label] = time.perf_counter() - t0
                if label == "surface aggregates":
                    shortfall = float(agg.shortfall.max())
            from distributed import get_client

            worker_peaks = get_client().run(_peak_rss_mib)
        seconds = times["surface aggregates"]
        print(f"all {args.accounts:,} accounts ({has_option.mean():.0%} hold options, "
              f"{(held.margin_mode.values == 'isolated').mean():.0%} isolated) x {slots} instrument slots x "
              f"{PRICE.size} x {VOL.size} scenarios, Zarr -> {where.split(' at ')[0]}: {seconds:.2f} s = "
              f"{args.accounts * slots * grid / seconds / 1e9:.2f} e9 position-scenario evaluations/s (every cell "
              f"counted; accounts liquidated, shortfall, worst ratio per account); worst shortfall "
              f"{shortfall:,.0f} USD; SPAN (16 scenarios) for every account: {times['SPAN']:.2f} s; "
              f"peak RSS per worker {', '.join(f'{v:,.0f}' for v in worker_peaks.values())} MiB")
        # what reading the positions costs, from the same store (one thread)
        with dask_scheduler("sync"):
            t0 = time.perf_counter()
            positions.compute()
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            positions["margin_mode"].compute()
            t_modes = time.perf_counter() - t0
        print(f"reading the {args.accounts:,} accounts' positions from the store, one thread: {t_read:.2f} s, of "
              f"which margin_mode (stored as flag codes, decoded to strings): {t_modes:.2f} s")
        # 2. perpetual-only portfolios (cross and isolated) and portfolios with options, 2 threads
        # (each subset is written to a store of its own and read back lazily, as a workflow
        # reads its accounts)
        tmp = Path(tempfile.mkdtemp(prefix="gpu_risk_stress_subsets_"))
        subsets = {}
        for label, rows in (("perps", np.flatnonzero(~has_option)), ("options", np.flatnonzero(has_option)),
                            ("cross", np.flatnonzero(~has_option & (held.margin_mode.values == "cross"))
                             [: args.numpy_accounts])):
            store.write_positions(held.isel(account=rows), tmp / f"{label}.zarr", market.attrs["date"])
            subsets[label] = store.open_positions(tmp / f"{label}.zarr", validate=False)
        perps, options = subsets["perps"], subsets["options"]
        rates = {}
        for label, sub in (("perpetual-only", perps), ("with options", options)):
            for threads, scheduler in ((1, "sync"), (2, "threads")):
                with dask_scheduler(scheduler):
                    t0 = time.perf_counter()
                    _aggregates(sub, market)
                    t = time.perf_counter() - t0
                rates[label, threads] = sub.sizes["account"] * slots * grid / t
                extra = ""
                if label == "with options":
                    n_opt = int((held.position.values[has_option][:, kind == "option"] != 0).sum())
                    extra = f"; {n_opt * grid / t / 1e6:.1f} M option revaluations/s"
                print(f"{label} ({sub.sizes['account']:,} accounts), {threads} thread(s): "
                      f"{rates[label, threads] / 1e9:.2f} e9 evaluations/s{extra}")
        # 3. the vectorised NumPy version on perpetual-only cross accounts (one process), the
        # same metric: compute only (arrays in memory on both sides), and end to end from the
        # same Zarr store (NumPy reads it with xarray first)
        m = market_arrays(market)
        rows = np.flatnonzero(~has_option & (held.margin_mode.values == "cross"))[: args.numpy_accounts]
        n_cross = rows.size
        cells = n_cross * slots * grid
        in_memory = held.isel(account=rows).compute()

        def run_numpy(ds):
            return numpy_surface(ds.balance.values, ds.position.values, ds.entry_price.values, m)

        t0 = time.perf_counter()
        ratio, liquidated, shortfall_np, worst = run_numpy(in_memory)
        t_numpy = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_numpy(store.open_positions(tmp / "cross.zarr", validate=False).compute())
        t_numpy_store = time.perf_counter() - t0
        chunked = in_memory.chunk({"account": 32_768}, token="in-memory")  # (token: no hashing of the data)
        engine = {}
        for label, source in (("memory", chunked), ("store", subsets["cross"])):
            for threads, scheduler in ((1, "sync"), (2, "threads")):
                with dask_scheduler(scheduler):
                    t0 = time.perf_counter()
                    mine = _aggregates(source, market)
                    engine[label, threads] = time.perf_counter() - t0
        got = stress_surface(in_memory, market, PRICE, vol_shocks=VOL, validate=False)
        np.testing.assert_allclose(got.collateral_ratio.values[:, :, 0], ratio, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mine.worst_collateral_ratio.values, worst, rtol=1e-9, atol=1e-12)
        assert (np.abs(mine.accounts_liquidated.values[:, 0] - liquidated) <= 2).all()  # ratios ~1 may flip
        np.testing.assert_allclose(mine.shortfall.values[:, 0], shortfall_np, rtol=1e-9)
        print(f"vectorised NumPy (ratio, N, count, shortfall, worst per shock), {n_cross:,} perpetual-only cross "
              f"accounts: {cells / t_numpy / 1e9:.3f} e9 evaluations/s in memory, "
              f"{cells / t_numpy_store / 1e9:.3f} e9/s reading the store first")
        for label, base in (("memory", t_numpy), ("store", t_numpy_store)):
            print(f"  engine, {'arrays in memory' if label == 'memory' else 'from the store'}: "
                  f"1 thread {cells / engine[label, 1] / 1e9:.2f} e9/s = {base / engine[label, 1]:.1f}x NumPy; "
                  f"2 threads {cells / engine[label, 2] / 1e9:.2f} e9/s = {base / engine[label, 2]:.1f}x NumPy")
        print("  (results agree to 1e-9, or 1e-12 absolute where C cancels to ~0)")
        ok, why = gpu_available()
        if ok:
            from gpu_risk.backend import to_backend

            gpu = to_backend(positions, "gpu")
            _aggregates(gpu.isel(account=slice(0, 1000)), market)
            t0 = time.perf_counter()
            _aggregates(gpu, market)
            t_gpu = time.perf_counter() - t0
            print(f"GPU ({why}), all accounts from the store: {args.accounts * slots * grid / t_gpu / 1e9:.2f} e9 "
                  f"evaluations/s = {seconds / t_gpu:.1f}x the {where.split(' at ')[0]}")
        else:
            print(f"GPU: not run ({why})")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"peak RSS of this process: {_peak_rss_mib():,.0f} MiB (it holds the {args.accounts:,} "
              f"accounts in memory for the comparisons; the workers read chunks)")


if __name__ == "__main__":
    main()
