"""Portfolio contagion on the demo store, against the single-instrument cascade.

    python benchmarks/contagion.py [--data data/demo] [--every 1h] [--sample 300]

On one day of the demo store (`make demo`: 4 perpetuals with books, 4 options, 50,000
accounts; synthesised into a temporary directory when absent), prints in one run:
- `gpu_risk.contagion` with the day's books in memory: contagions (time x shock) per
  second and cells (instrument x time x shock) per second;
- `gpu_risk.cascade` on the same books, shocks and times (liquidation prices computed
  beforehand), cells per second, and the ratio;
- the brute-force simulator of the tests (plain Python, every account evaluated from
  scratch, every book walked level by level) on a sample of accounts, against the kernel
  on the same sample;
- end to end: `gpu-risk contagion` Zarr to Zarr on that day (the command users run), its
  wall time, where the time went (its own stage breakdown), the ratio to the function in
  memory, and this machine's read bandwidth measured now.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import machine, read_bandwidth
from contagion_reference import contagion_reference
from gpu_risk.kernels.pricing import black76_price
from test_contagion import reference_inputs

from gpu_risk import cascade, contagion, liquidation, open_book, open_market, open_positions
from gpu_risk.contagion import reference_instruments
from gpu_risk.liquidation import market_arrays
from gpu_risk.synth import SynthConfig, synth

SHOCKS = [-0.2, -0.1, -0.05, -0.03, -0.01, 0.01, 0.03, 0.05, 0.1, 0.2]


def _unit_value(kind, m, i, coin, entry_col, mark_now):
    """Per unit of position: value (PnL, or the option's model value) for every account."""
    if kind == 0:
        return mark_now - entry_col
    if kind == 1:
        return (1.0 / entry_col - 1.0 / mark_now) * coin
    return np.full(entry_col.shape, black76_price(coin, m.strike[i], m.years[i], m.vol[i], bool(m.is_call[i]), 0.0))


def _maintenance(m, i, notional):
    floors = m.floor[i][np.isfinite(m.floor[i])]
    k = np.maximum(np.searchsorted(floors, notional, side="right") - 1, 0)
    return notional * m.mmr[i][k] - m.amount[i][k]


def numpy_contagion(bid_price, bid_size, ask_price, ask_size, mid, booked, reference, s0, balance, position,
                    entry, iso_margin, isolated, m):
    """The straightforward NumPy version of one contagion (the rules of the kernel): every
    account's parts as array expressions each round, the books walked with cumulative sums.
    Returns the final prices (I,)."""
    n_acc, n_inst = position.shape
    asset_f = 1.0 + m.beta * s0
    factor = 1.0 + m.beta[m.underlying] * s0
    price = np.where(booked, mid * factor, np.nan)
    remaining = {i: [bid_size[i].copy(), ask_size[i].copy()] for i in range(n_inst) if booked[i]}
    alive = np.ones(n_acc, bool)
    open_pos = position != 0.0
    held = balance != 0.0
    while True:
        p = m.price * asset_f
        mark_now = np.where(booked, price, m.mark * asset_f[m.underlying])
        coin = p[m.underlying]
        value = np.zeros((n_acc, n_inst))
        mm = np.zeros((n_acc, n_inst))
        unit = np.ones(n_inst)
        for i in range(n_inst):
            q = position[:, i]
            value[:, i] = np.where(q != 0, q * _unit_value(m.kind[i], m, i, coin[i], entry[:, i], mark_now[i]), 0.0)
            if m.kind[i] != 2:
                notional = np.abs(q) * (mark_now[i] if m.kind[i] == 0 else 1.0)
                mm[:, i] = np.where(q != 0, _maintenance(m, i, notional), 0.0)
            if m.kind[i] == 1:
                unit[i] = coin[i]
        wallet_c = np.where(held & (balance > 0), balance * p * (1 - m.haircut), 0.0).sum(axis=1)
        wallet_r = np.where(balance < 0, -balance * p, 0.0).sum(axis=1)
        cross_c = wallet_c + np.where(open_pos, value, 0.0).sum(axis=1)
        cross_r = wallet_r + np.where(open_pos, mm, 0.0).sum(axis=1)
        cross_gone = alive & ~isolated & (cross_c < cross_r)
        wallet_gone = alive & isolated & (wallet_c < wallet_r)
        part_gone = isolated[:, None] & open_pos & (iso_margin * unit + value < mm)
        closing = (cross_gone[:, None] & open_pos) | part_gone
        if not (cross_gone.any() or wallet_gone.any() or closing.any()):
            return np.where(booked, price, m.mark * asset_f[m.underlying])
        alive &= ~(cross_gone | wallet_gone)
        open_pos &= ~closing
        closed = np.where(closing, position, 0.0)
        sells, buys = np.maximum(closed, 0).sum(axis=0), np.maximum(-closed, 0).sum(axis=0)
        for i in range(n_inst):
            net = sells[i] - buys[i]
            if not booked[i] or net == 0:
                continue
            side = 0 if net > 0 else 1
            levels = (bid_price if side == 0 else ask_price)[i] * factor[i]
            size = np.where(np.isfinite(levels), remaining[i][side], 0.0)
            depth = np.cumsum(size)
            reach = int(np.searchsorted(depth, abs(net), side="left"))
            taken = np.minimum(size, np.maximum(abs(net) - (depth - size), 0.0))
            remaining[i][side] = size - taken
            traded = np.flatnonzero(taken > 0)
            if traded.size:
                price[i] = levels[traded[-1]] if reach < size.size else levels[np.flatnonzero(size > 0)[-1]]
        for s, ref in enumerate(reference):
            if ref >= 0:
                asset_f[s] = price[ref] / mid[ref]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "data/demo")
    p.add_argument("--every", default="1h")
    p.add_argument("--sample", type=int, default=2000, help="accounts for the brute-force comparison")
    args = p.parse_args()
    print(f"machine: {machine()}")
    data = args.data
    if not (data / "book.zarr").exists():
        data = Path(tempfile.mkdtemp(prefix="gpu_risk_contagion_"))
        synth(SynthConfig(out=str(data), days=1, instruments=4, accounts=50_000, snapshots_per_day=50_000))
    day = "2026-01-05"
    market = open_market(data / "market.zarr", day)
    positions = open_positions(data / "positions.zarr", day, market=market).load()
    kinds = dict(zip(market.instrument.values.astype(str), market.kind.values.astype(str)))
    book = open_book(data / "book.zarr", start=day, end=day)
    perps = xr.DataTree.from_dict({f"/{n}": book[n].to_dataset().load() for n in book.children
                                   if kinds[n] in ("linear", "inverse")})
    booked = len(perps.children)
    contagion(perps, positions.isel(account=slice(0, 10)), market, args.every, SHOCKS[:1])  # compiled
    seconds, out = timed(lambda: contagion(perps, positions, market, args.every, SHOCKS, validate=False))
    n_time = out.sizes["time"]
    runs = n_time * len(SHOCKS)
    cells = booked * runs
    print(f"contagion, {positions.sizes['account']:,} accounts, {booked} books, {n_time} times x {len(SHOCKS)} "
          f"shocks: {seconds:.2f} s = {runs / seconds:,.0f} contagions/s, {cells / seconds:,.0f} cells/s; "
          f"rounds up to {int(out.rounds.max())}, {int(out.accounts_liquidated.sum()):,} positions closed")
    liq = liquidation(positions, market).compute()
    c_seconds, _ = timed(lambda: cascade(perps, positions, market, args.every, SHOCKS, liquidation=liq,
                                         validate=False).compute())
    print(f"cascade, the same books, times and shocks: {c_seconds:.2f} s = {cells / c_seconds:,.0f} cells/s; "
          f"contagion costs {seconds / c_seconds:.1f}x the single-instrument cascades")
    # the brute-force simulator on a sample of accounts, one time, two shocks
    sample = positions.isel(account=slice(0, args.sample))
    when = out.time.values[:1]
    k_seconds, small = timed(lambda: contagion(perps, sample, market, when, [-0.05, 0.05], validate=False))
    names = list(market.instrument.values.astype(str))
    m = market_arrays(market)
    at_time = xr.DataTree.from_dict({  # each book's last snapshot at or before the time
        f"/{n}": perps[n].to_dataset().isel(time=[int(np.searchsorted(perps[n].time.values, when[0], "right")) - 1])
        for n in perps.children})
    books, accounts, mkt = reference_inputs(at_time, sample, market)  # the tests' own conversion
    booked_mask = np.array([i in books for i in range(len(names))])
    r_seconds, found = timed(lambda: [contagion_reference(books, accounts, mkt, s0) for s0 in (-0.05, 0.05)])
    agree = np.allclose(small.final_price.values[:, 0, 0], found[0][0], equal_nan=True)
    print(f"brute-force simulator, {args.sample} accounts, 2 contagions: {r_seconds:.2f} s against the kernel's "
          f"{k_seconds:.3f} s (the function, selection included) = {r_seconds / k_seconds:,.0f}x; "
          f"final prices agree: {agree}")
    # the straightforward NumPy version, every account, one time, every shock
    book_arrays = [np.full((len(names), max(perps[n].sizes["level"] for n in perps.children)), np.nan)
                   for _ in range(4)]
    mid = np.full(len(names), np.nan)
    for name in perps.children:
        ds = perps[name].to_dataset()
        row = int(np.searchsorted(ds.time.values, when[0], side="right")) - 1
        i = names.index(name)
        for a, v in zip(book_arrays, ("bid_price", "bid_size", "ask_price", "ask_size")):
            a[i, :ds.sizes["level"]] = ds[v].values[row]
        mid[i] = 0.5 * (ds.bid_price.values[row, 0] + ds.ask_price.values[row, 0])
    for a in (book_arrays[1], book_arrays[3]):
        np.nan_to_num(a, copy=False)
    everyone = [np.asarray(positions[v].values, float) for v in ("balance", "position", "entry_price",
                                                                  "isolated_margin")]
    iso = positions.margin_mode.values == "isolated"
    ref_all = reference_instruments(market, positions, booked_mask)
    n_seconds, found = timed(lambda: [numpy_contagion(*book_arrays, mid, booked_mask, ref_all, s0, *everyone, iso, m)
                                      for s0 in SHOCKS])
    one_time = contagion(perps, positions, market, when, SHOCKS, validate=False)
    kernel_one = seconds / n_time
    same = np.allclose(np.array(found).T[booked_mask], one_time.final_price.values[booked_mask, 0, :], rtol=1e-12)
    print(f"NumPy version, {positions.sizes['account']:,} accounts, one time x {len(SHOCKS)} shocks: {n_seconds:.2f} s "
          f"against the kernel's {kernel_one:.3f} s per time = {n_seconds / kernel_one:,.0f}x; final prices agree: "
          f"{same}")
    # end to end, as users run it
    gbps = read_bandwidth() / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "gpu_risk.cli", "contagion", "--book", str(data / "book.zarr"),
               "--positions", str(data / "positions.zarr"), "--market", str(data / "market.zarr"),
               "--out", f"{tmp}/r.zarr",
               "--start", day, "--end", day, "--every", args.every,
               "--initial-shocks=" + ",".join(f"{s:g}" for s in SHOCKS), "--depth-extrapolation", "none",
               "--json"]
        e_seconds, done = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
        if done.returncode not in (0, 3):
            raise SystemExit(done.stderr[-2000:])
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        stages = summary["stages"][day]["breakdown"]
        top = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])[:5])
    book_bytes = sum(perps[n].to_dataset()[v].nbytes for n in perps.children
                     for v in ("bid_price", "bid_size", "ask_price", "ask_size"))
    print(f"end to end, gpu-risk contagion Zarr to Zarr, one day: {e_seconds:.2f} s (process start included) = "
          f"{e_seconds / seconds:.2f}x the function in memory; where the time went: {top}; the day's books "
          f"({book_bytes / 1e6:.0f} MB) read at the measured {gbps:.1f} GB/s take "
          f"{book_bytes / gbps / 1e9 * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
