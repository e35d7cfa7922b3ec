"""Seeded synthetic data of any size: books, positions and market parameters.

Books (per instrument, event time, L levels): the mid follows a stochastic-volatility
walk with jumps (log-volatility mean-reverting, so volatility clusters), bridged so that
each UTC day closes exactly at a daily skeleton price shared by every instrument on the
same underlying (daily returns load on one market factor, as crypto does). Snapshots
arrive with an intraday seasonality and millisecond timestamps (so some repeat). Prices
sit on a tick grid with occasional gaps; depth grows away from the touch; a persistent
imbalance regime tilts bid against ask depth. Only the day's time and mid paths
(~40 bytes a snapshot) are held in memory; the (time, level) arrays are generated and
written one Zarr chunk at a time.

Accounts: perp traders (cross and isolated, a log-normal leverage distribution, a long
skew that differs by instrument), inverse-perp traders with coin collateral, lending
accounts with borrowed stablecoins, multi-collateral accounts, and option traders.
Positions of one as-of date are generated in account slabs, each from its own seed, so
any number of accounts fits in bounded memory and any slab can be regenerated alone.

Everything is a function of ``seed``: re-running gives identical stores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from . import store
from .kernels._compile import cpu_kernel
from .kernels.pricing import black76
from .schema import as_str

DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class Underlying:
    name: str
    price: float  # starting price, USD
    daily_vol: float
    beta: float  # loading on the market factor
    haircut: float


@dataclass(frozen=True)
class Instrument:
    name: str
    underlying: str
    kind: str  # linear | inverse
    tick: float
    depth: float  # typical size at level 1 (base units; USD contracts for inverse)
    long_share: float  # share of positions that are long (crowding)
    brackets: str  # key into BRACKETS


UNDERLYINGS = {u.name: u for u in (
    Underlying("BTC", 60_000.0, 0.030, 1.0, 0.05),
    Underlying("ETH", 3_000.0, 0.040, 1.2, 0.05),
    Underlying("SOL", 150.0, 0.060, 1.5, 0.10),
    Underlying("XRP", 0.60, 0.055, 1.4, 0.15),
    Underlying("DOGE", 0.15, 0.070, 1.7, 0.20),
    Underlying("BNB", 550.0, 0.035, 1.1, 0.10),
)}
STABLES = {"USDT": 0.0, "USDC": 0.0}  # haircut; beta 0

CATALOG = [
    Instrument("BTCUSDT", "BTC", "linear", 0.1, 15.0, 0.58, "btc"),
    Instrument("ETHUSDT", "ETH", "linear", 0.01, 60.0, 0.61, "eth"),
    Instrument("SOLUSDT", "SOL", "linear", 0.01, 450.0, 0.70, "alt"),
    Instrument("BTCUSD_PERP", "BTC", "inverse", 0.1, 200_000.0, 0.55, "btc"),
    Instrument("XRPUSDT", "XRP", "linear", 0.0001, 150_000.0, 0.66, "alt"),
    Instrument("DOGEUSDT", "DOGE", "linear", 0.00001, 500_000.0, 0.72, "alt"),
    Instrument("BNBUSDT", "BNB", "linear", 0.01, 150.0, 0.60, "alt"),
    Instrument("ETHUSD_PERP", "ETH", "inverse", 0.01, 100_000.0, 0.57, "eth"),
]


def _binance_brackets(floors, mmrs):
    """Maintenance amounts from floors and rates, as Binance derives them:
    cum_k = cum_{k-1} + floor_k (mmr_k - mmr_{k-1}), so MM is continuous in notional."""
    cum = [0.0]
    for k in range(1, len(floors)):
        cum.append(cum[-1] + floors[k] * (mmrs[k] - mmrs[k - 1]))
    return [[float(f), float(m), float(c)] for f, m, c in zip(floors, mmrs, cum)]


# Binance USD-M BTCUSDT brackets (the schedule behind the venue's own worked example:
# 2.5 % / 16,300 for 1M-10M notional); ETH and altcoin schedules in the same shape.
BRACKETS = {
    "btc": _binance_brackets([0, 50e3, 250e3, 1e6, 10e6, 20e6, 50e6, 100e6, 200e6, 300e6],
                             [.004, .005, .01, .025, .05, .1, .125, .15, .25, .5]),
    "eth": _binance_brackets([0, 10e3, 100e3, 500e3, 1e6, 2e6, 5e6, 10e6, 20e6],
                             [.005, .0065, .01, .02, .05, .1, .125, .15, .25]),
    "alt": _binance_brackets([0, 5e3, 25e3, 100e3, 250e3, 1e6, 5e6],
                             [.01, .025, .05, .1, .125, .25, .5]),
}

# The power depth model's gamma (cumulative size ~ distance from the mid ** gamma beyond 10
# visible levels), fitted by `gpu-risk fit-depth` on the shared Binance captures of
# 2024-08-08 with 1,000 levels a side (docs/methodology.md, "Depth beyond the visible
# levels"): BTCUSDT (USD-M) 1.283, BTCUSD_PERP (COIN-M) 1.148, ETHUSDT (USD-M) 1.500.
# Instruments without a deep capture take the smallest of them (the least depth).
DEPTH_EXPONENTS = {"BTCUSDT": 1.283, "BTCUSD_PERP": 1.148, "ETHUSDT": 1.500}
DEPTH_EXPONENT_OTHERS = min(DEPTH_EXPONENTS.values())


def catalog(n_instruments: int) -> list[Instrument]:
    """The first ``n`` instruments of the catalogue, extended with synthetic altcoins."""
    out = list(CATALOG[:n_instruments])
    for k in range(len(CATALOG), n_instruments):
        name = f"ALT{k}"
        UNDERLYINGS.setdefault(name, Underlying(name, 1.0 + k, 0.08, 1.8, 0.25))
        out.append(Instrument(f"{name}USDT", name, "linear", 0.0001, 50_000.0, 0.7, "alt"))
    return out


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _name_key(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


# ----------------------------------------------------------------------- skeleton


def daily_closes(seed: int, days: int, underlyings: list[str]) -> dict[str, np.ndarray]:
    """Close price of each underlying for day -1 (the open of day 0) .. days-1.

    Daily log returns: beta * market factor + idiosyncratic, with GARCH(1,1) variance
    on the factor so calm and stormy days cluster; fat tails from Student-t shocks.
    """
    rng = _rng(seed, 1)
    var = 1.0
    factor = np.empty(days)
    for d in range(days):
        shock = rng.standard_t(4) / math.sqrt(2.0)
        factor[d] = 0.025 * math.sqrt(var) * shock
        var = 0.1 + 0.15 * shock**2 + 0.75 * var
    closes = {}
    for name in underlyings:
        u = UNDERLYINGS[name]
        idio = _rng(seed, 2, _name_key(name)).standard_t(4, size=days) / math.sqrt(2.0)
        idio_vol = math.sqrt(max(u.daily_vol**2 - (u.beta * 0.025) ** 2, (0.3 * u.daily_vol) ** 2))
        r = u.beta * factor + idio_vol * idio
        closes[name] = u.price * np.exp(np.concatenate([[0.0], np.cumsum(r)]))
    return closes


# ------------------------------------------------------------------------ book


def snapshot_times(rng: np.random.Generator, day_start: np.datetime64, n: int) -> np.ndarray:
    """``n`` sorted millisecond timestamps in one UTC day, busier around 14:00-16:00 UTC."""
    accepted = np.empty(0)
    while accepted.size < n:
        s = rng.uniform(0.0, 86_400.0, size=2 * n)
        intensity = 1.0 + 0.6 * np.cos(2 * np.pi * (s - 15 * 3600) / 86_400)
        accepted = np.concatenate([accepted, s[rng.uniform(0, 1.6, size=s.size) < intensity]])
    seconds = np.sort(accepted[:n])
    ms = np.floor(seconds * 1000).astype(np.int64)
    return day_start.astype("datetime64[ns]") + (ms * 1_000_000).astype("timedelta64[ns]")


@cpu_kernel
def _mid_path(dt, seed, open_log, close_log, sigma, out_log_mid, out_vol_ratio, out_regime):
    """Stochastic-volatility walk with jumps from open_log, bridged to close_log."""
    np.random.seed(seed)
    n = dt.shape[0]
    log_sigma0 = math.log(sigma)
    lv = log_sigma0
    x = open_log
    regime = 0.0
    for k in range(n):
        h = dt[k]
        # log-vol: mean reversion over ~30 minutes, vol of vol 1.2 per sqrt(hour)
        lv += (log_sigma0 - lv) * min(h / 1800.0, 1.0) + 1.2 * math.sqrt(h / 3600.0) * np.random.normal()
        s = math.exp(lv)
        x += s * math.sqrt(h) * np.random.normal() - 0.5 * s * s * h
        if np.random.random() < h * 4.0 / 86400.0:  # ~4 jumps a day, slightly down-skewed
            x += np.random.normal(-0.001, 0.004)
        if np.random.random() < h / 900.0:  # imbalance regimes last ~15 minutes
            regime = float(np.random.randint(-1, 2))
        out_log_mid[k] = x
        out_vol_ratio[k] = s / sigma
        out_regime[k] = regime
    # Brownian bridge to the day's close: the correction grows linearly in elapsed time
    total = 0.0
    for k in range(n):
        total += dt[k]
    gap = close_log - x
    elapsed = 0.0
    for k in range(n):
        elapsed += dt[k]
        out_log_mid[k] += gap * (elapsed / total if total > 0 else 1.0)


@cpu_kernel
def _book_rows(log_mid, vol_ratio, regime, tick, depth, seed, bid_price, ask_price, bid_size, ask_size):
    """Fill one chunk of L-level snapshots from the mid path (prices on the tick grid)."""
    np.random.seed(seed)
    n, levels = bid_price.shape
    lot = depth / 1000.0
    for k in range(n):
        mid_ticks = math.exp(log_mid[k]) / tick
        spread = 1 + int(-math.log(1.0 - np.random.random()) * 0.8 * vol_ratio[k])
        best_bid = math.floor(mid_ticks - 0.5 * spread)
        tilt = 0.45 * regime[k] + 0.25 * np.random.normal()
        b = best_bid
        a = best_bid + spread
        for i in range(levels):
            if i > 0:
                b -= 1 + (int(-math.log(1.0 - np.random.random()) * 1.5) if np.random.random() < 0.15 else 0)
                a += 1 + (int(-math.log(1.0 - np.random.random()) * 1.5) if np.random.random() < 0.15 else 0)
            shape = depth * (1.0 + 0.45 * i) ** 1.1
            bid_price[k, i] = b * tick
            ask_price[k, i] = a * tick
            bid_size[k, i] = max(lot, round(shape * math.exp(0.6 * np.random.normal() + tilt) / lot) * lot)
            ask_size[k, i] = max(lot, round(shape * math.exp(0.6 * np.random.normal() - tilt) / lot) * lot)
        if np.random.random() < 0.002:  # now and then a thin book: the deepest level empty
            if np.random.random() < 0.5:
                bid_price[k, levels - 1] = np.nan
                bid_size[k, levels - 1] = 0.0
            else:
                ask_price[k, levels - 1] = np.nan
                ask_size[k, levels - 1] = 0.0


def write_book_day(path, inst: Instrument, inst_index: int, day_index: int, day: np.datetime64,
                   open_price: float, close_price: float, snapshots: int, levels: int, seed: int,
                   chunk_rows: int) -> None:
    rng = _rng(seed, 3, inst_index, day_index)
    time = snapshot_times(rng, day, snapshots)
    t_ns = time.view(np.int64)
    dt = np.empty(snapshots)
    dt[0] = (t_ns[0] - day.astype("datetime64[ns]").view(np.int64)) / 1e9
    dt[1:] = np.diff(t_ns) / 1e9
    log_mid, vol_ratio, regime = (np.empty(snapshots) for _ in range(3))
    sigma = UNDERLYINGS[inst.underlying].daily_vol / math.sqrt(86_400.0)
    path_seed = int(rng.integers(2**31))
    _mid_path(dt, path_seed, math.log(open_price), math.log(close_price), sigma,
              log_mid, vol_ratio, regime)
    lot = inst.depth / 1000.0  # as in _book_rows: prices are ticks x tick, sizes lots x lot
    writer = store.book_writer(path, inst.name, day, time, levels, chunk_rows,
                               extra_attrs={"source": f"gpu_risk synth seed={seed}",
                                            "tick_size": inst.tick,
                                            "size_units": "USD contracts" if inst.kind == "inverse"
                                            else "base units"},
                               ticks={"bid_price": (0.0, inst.tick), "ask_price": (0.0, inst.tick),
                                      "bid_size": (0.0, lot), "ask_size": (0.0, lot)})
    for start in range(0, snapshots, chunk_rows):
        stop = min(start + chunk_rows, snapshots)
        arrays = [np.empty((stop - start, levels)) for _ in range(4)]
        _book_rows(log_mid[start:stop], vol_ratio[start:stop], regime[start:stop], inst.tick,
                   inst.depth, int(rng.integers(2**31)), *arrays)
        slab = xr.Dataset({name: (("time", "level"), a) for name, a in
                           zip(("bid_price", "ask_price", "bid_size", "ask_size"), arrays)})
        writer.write(start, slab)
    writer.close()


# -------------------------------------------------------------------- market


def option_instruments(underlyings: list[str], first_day: np.datetime64, closes) -> list[dict]:
    """A few European options on the two largest underlyings, listed from the first day."""
    out = []
    expiry = pd.Timestamp(first_day) + pd.Timedelta(days=45)
    for u in [n for n in ("BTC", "ETH") if n in underlyings]:
        spot = closes[u][0]
        step = 10 ** math.floor(math.log10(spot * 0.05))
        for moneyness, right in ((1.1, "call"), (0.9, "put")):
            strike = round(spot * moneyness / step) * step
            out.append({"name": f"{u}-{expiry:%y%m%d}-{strike:.0f}-{right[0].upper()}",
                        "underlying": u, "strike": float(strike), "expiry": expiry,
                        "call_put": right, "implied_vol": 0.55 if u == "BTC" else 0.65})
    return out


def market_for_day(instruments: list[Instrument], options: list[dict], closes, day_index: int,
                   day: np.datetime64) -> xr.Dataset:
    """Market parameters as of the close of ``day``: prices are the skeleton closes."""
    underlyings = sorted({i.underlying for i in instruments} | {o["underlying"] for o in options})
    assets = {name: {"price": 1.0, "haircut": h, "beta": 0.0} for name, h in STABLES.items()}
    for u in underlyings:
        assets[u] = {"price": float(closes[u][day_index + 1]), "haircut": UNDERLYINGS[u].haircut,
                     "beta": UNDERLYINGS[u].beta}
    spec_instruments = {}
    for inst in instruments:
        spec_instruments[inst.name] = {"kind": inst.kind, "underlying": inst.underlying,
                                       "mark_price": assets[inst.underlying]["price"],
                                       "brackets": BRACKETS[inst.brackets],
                                       "depth_exponent": DEPTH_EXPONENTS.get(inst.name, DEPTH_EXPONENT_OTHERS)}
    as_of = pd.Timestamp(day) + pd.Timedelta(days=1)  # the close of the day
    for o in options:
        years = max((o["expiry"] - as_of).total_seconds(), 0.0) / (365.25 * 86_400)
        forward = assets[o["underlying"]]["price"]
        value = float(black76(forward, o["strike"], years, o["implied_vol"], o["call_put"] == "call"))
        spec_instruments[o["name"]] = {"kind": "option", "underlying": o["underlying"],
                                       "mark_price": max(value, 1e-8), "strike": o["strike"],
                                       "expiry": o["expiry"], "call_put": o["call_put"],
                                       "implied_vol": o["implied_vol"]}
    ds = store.market_from_dict({"assets": assets, "instruments": spec_instruments})
    ds.attrs["date"] = store.day_key(day)
    return ds


# ------------------------------------------------------------------- accounts


def _mmr_at(brackets, notional):
    floors = np.array([b[0] for b in brackets])
    rates = np.array([b[1] for b in brackets])
    return rates[np.searchsorted(floors, notional, side="right") - 1]


def account_slab(seed: int, day_index: int, start: int, n: int, market: xr.Dataset,
                 instruments: list[Instrument]) -> xr.Dataset:
    """Positions of accounts ``start .. start+n`` as of one day (vectorised NumPy).

    Each account's kind, size and leverage come from the account seed alone; its
    positions' sizes drift from day to day with the day seed.
    """
    base = _rng(seed, 10, start)  # who the accounts are: stable across days
    day = _rng(seed, 11, start, day_index)  # what they hold today
    assets = [str(a) for a in market.asset.values]
    inst_names = [str(i) for i in market.instrument.values]
    a_idx = {a: k for k, a in enumerate(assets)}
    i_idx = {i: k for k, i in enumerate(inst_names)}
    price = market.price.values
    mark = market.mark_price.values
    kind = as_str(market.kind.values)
    underlying = as_str(market.underlying.values)

    balance = np.zeros((n, len(assets)))
    position = np.zeros((n, len(inst_names)))
    entry = np.full((n, len(inst_names)), np.nan)
    iso_margin = np.zeros((n, len(inst_names)))
    mode = np.full(n, "cross", dtype=object)

    account_type = base.choice(5, size=n, p=[0.60, 0.08, 0.15, 0.10, 0.07])
    equity = np.clip(np.exp(base.normal(math.log(3_000), 1.6, size=n)), 50, 5e7)
    leverage = np.clip(np.exp(base.normal(math.log(6), 0.75, size=n)), 1.0, 100.0)
    isolated = base.random(n) < 0.25
    linear = [i for i in instruments if i.kind == "linear"]
    inverse = [i for i in instruments if i.kind == "inverse"]
    options = [name for name, k in zip(inst_names, kind) if k == "option"]
    stables = [s for s in STABLES if s in a_idx]
    drift = np.exp(day.normal(0, 0.15, size=n))  # today's size versus the account's usual

    def open_perp(rows, inst: Instrument, notional, isolated_rows):
        k = i_idx[inst.name]
        long = day.random(rows.size) < inst.long_share
        m = mark[k]
        entry_px = m * np.exp(day.normal(0, 0.03, size=rows.size))
        if inst.kind == "inverse":
            q = notional  # USD contracts
            upnl_usd = q * (1 / entry_px - 1 / m) * m
        else:
            q = notional / m
            upnl_usd = q * (m - entry_px)
        q = np.where(long, q, -q)
        upnl_usd = np.where(long, upnl_usd, -upnl_usd)
        position[rows, k] = q
        entry[rows, k] = entry_px
        return upnl_usd

    for t, rows in ((t, np.flatnonzero(account_type == t)) for t in range(5)):
        if rows.size == 0:
            continue
        e, lev = equity[rows], leverage[rows]
        if t in (0, 3) and linear:  # perp traders (3: with crypto collateral too)
            n_pos = base.integers(1, min(3, len(linear)) + 1, size=rows.size)
            weights = np.array([1.0 / (1 + j) for j in range(len(linear))])
            upnl_total = np.zeros(rows.size)
            for j, inst in enumerate(linear):
                holds = (base.random(rows.size) < weights[j] / weights.sum() * n_pos * 1.2)
                if j == 0:
                    holds |= n_pos >= 1
                sel = np.flatnonzero(holds)
                if sel.size == 0:
                    continue
                notional = e[sel] * lev[sel] / n_pos[sel] * drift[rows[sel]]
                cap = 0.8 / _mmr_at(BRACKETS[inst.brackets], notional)  # no one starts liquidatable
                notional = np.minimum(notional, e[sel] * cap / n_pos[sel])
                upnl = open_perp(rows[sel], inst, notional, None)
                iso = isolated[rows[sel]] & (t == 0)
                k = i_idx[inst.name]
                iso_rows = rows[sel][iso]
                # isolated: the position's own wallet margin is its initial margin, topped up
                # by the owner when the position is under water
                iso_margin[iso_rows, k] = notional[iso] / lev[sel][iso] + np.maximum(-upnl[iso], 0.0)
                upnl_total[sel] += np.where(iso, 0.0, upnl)
            if t == 0:
                mode[rows[isolated[rows]]] = "isolated"
                free = np.where(isolated[rows], 0.2 * e, e - upnl_total)
                balance[rows, a_idx["USDT"]] = np.maximum(free, 0.05 * e)
            else:
                coin = base.choice([i.underlying for i in linear], size=rows.size)
                for u in np.unique(coin):
                    sel = coin == u
                    balance[rows[sel], a_idx[u]] = 0.6 * e[sel] / price[a_idx[u]]
                balance[rows, a_idx["USDT"]] = np.maximum(0.4 * e - upnl_total, 0.05 * e)
        elif t == 1 and inverse:  # inverse-perp traders, coin-margined
            inst = inverse[base.integers(len(inverse))]
            u = inst.underlying
            lev_c = np.minimum(lev, 0.8 / _mmr_at(BRACKETS[inst.brackets], e * lev))
            upnl = open_perp(rows, inst, e * lev_c * drift[rows], None)
            balance[rows, a_idx[u]] = np.maximum(e - upnl, 0.05 * e) / price[a_idx[u]]
        elif t == 2 or (t == 1 and not inverse):  # lending: crypto collateral, borrowed stables
            coin = base.choice(sorted({i.underlying for i in instruments}), size=rows.size)
            ltv = base.uniform(0.2, 0.9, size=rows.size) * drift[rows].clip(0.5, 1.1)
            for u in np.unique(coin):
                sel = coin == u
                balance[rows[sel], a_idx[u]] = e[sel] / price[a_idx[u]]
            haircut = market.haircut.values[[a_idx[c] for c in coin]]
            stable = base.choice(stables, size=rows.size)
            for s in np.unique(stable):
                sel = stable == s
                balance[rows[sel], a_idx[s]] = -ltv[sel] * e[sel] * (1 - haircut[sel])
        elif t == 4:  # option traders: long or short options, stablecoin margin
            balance[rows, a_idx["USDT"]] = e
            if options:
                picked = np.array([i_idx[o] for o in options])[base.integers(len(options), size=rows.size)]
                u_price = price[[a_idx[underlying[j]] for j in picked]]
                side = np.where(base.random(rows.size) < 0.55, 1.0, -1.0)
                q = side * e * np.minimum(lev, 5.0) / u_price * 0.5 * drift[rows]
                position[rows, picked] = q
                entry[rows, picked] = mark[picked] * np.exp(day.normal(0, 0.1, size=rows.size))
    ds = xr.Dataset(
        {"balance": (("account", "asset"), balance),
         "position": (("account", "instrument"), position),
         "entry_price": (("account", "instrument"), entry),
         "margin_mode": ("account", mode),
         "isolated_margin": (("account", "instrument"), iso_margin)},
        coords={"account": np.arange(start, start + n, dtype=np.int64)},
    )
    return ds


# ----------------------------------------------------------------------- driver


def write_market_history(path, inst: Instrument, inst_index: int, day_index: int, day: np.datetime64,
                         closes: np.ndarray, seed: int, every_s: int = 60) -> None:
    """One instrument-day of derivative tickers every ``every_s`` seconds: the index moves
    from the day's close to the next (a Brownian bridge in log price), the basis is a mean-
    reverting premium (about 5 bp), funding follows the premium (clipped at 0.75 %, as
    venues cap it), predicted funding is the premium now, and open interest grows with
    funding (longs crowd in while they pay) plus noise, continuous across days. Funding
    applies every 8 hours."""
    rng = _rng(seed, 7, inst_index, day_index)
    n = 86_400 // every_s
    start = np.datetime64(store.day_key(day), "ns")
    t = start + np.arange(n) * np.timedelta64(every_s, "s")
    u = np.arange(n) / n
    walk = np.cumsum(rng.normal(0.0, 1.0, n)) * UNDERLYINGS[inst.underlying].daily_vol / np.sqrt(n)
    bridge = walk - u * walk[-1]
    index = np.exp(np.log(closes[day_index]) * (1 - u) + np.log(closes[day_index + 1]) * u + bridge)
    premium = np.empty(n)
    premium[0] = rng.normal(0.0, 5e-4)
    shocks = rng.normal(0.0, 1.5e-4, n)
    for i in range(1, n):
        premium[i] = 0.98 * premium[i - 1] + shocks[i]
    mark = index * (1 + premium)
    last = mark * (1 + rng.normal(0.0, 1e-4, n))
    funding = np.clip(premium / 3 + 1e-4, -0.0075, 0.0075)
    predicted = np.clip(premium + 1e-4, -0.0075, 0.0075)
    # open interest: day-end anchors (a random walk over days, the same whichever day is
    # written first) joined by the day's path, whose steps grow with funding
    anchors = np.log(1e9 / closes[0] * (1 + 0.1 * inst_index)) + np.concatenate(
        [[0.0], np.cumsum(_rng(seed, 8, inst_index).normal(0.0, 0.03, len(closes)))])
    steps = np.cumsum(0.5 * funding + rng.normal(0.0, 3e-4, n))
    log_oi = anchors[day_index] * (1 - u) + anchors[day_index + 1] * u + steps - u * steps[-1]
    eight_hours = np.timedelta64(8, "h")
    funding_time = start + ((t - start) // eight_hours + 1) * eight_hours
    store.write_market_history_day(path, inst.name, store.day_key(day), t, {
        "funding_rate": funding, "predicted_funding_rate": predicted, "open_interest": np.exp(log_oi),
        "last_price": last, "index_price": index, "mark_price": mark}, funding_time,
        {"source": "gpu_risk synth"})


@dataclass
class SynthConfig:
    out: str
    days: int = 3
    instruments: int = 4
    accounts: int = 100_000
    levels: int = 10
    snapshots_per_day: int = 100_000
    start: str = "2026-01-05"
    seed: int = 42
    book_chunk_rows: int = store.BOOK_CHUNK_ROWS
    account_chunk_rows: int = store.ACCOUNT_CHUNK_ROWS
    overwrite: bool = False  # replace a dataset made with other settings
    market_history: bool = False  # also market_history.zarr: funding, open interest, mark and index
    compression: str = "lz4"  # the book store's chunks: "lz4" or "none" (stores.days.COMPRESSIONS)


SHAPING = ("days", "instruments", "accounts", "levels", "snapshots_per_day", "start", "seed")


def _same_settings_as_before(out: Path, cfg: SynthConfig) -> None:
    """A directory holds one synthetic dataset: re-running with the same settings finishes
    it (days already complete are kept); other settings are refused instead of mixing two
    datasets in one store."""
    import json  # noqa: PLC0415

    record = out / "synth.json"
    wanted = {k: getattr(cfg, k) for k in SHAPING}
    if record.exists():
        before = json.loads(record.read_text())
        differ = {k: (before.get(k), v) for k, v in wanted.items() if before.get(k) != v}
        if differ:
            what = ", ".join(f"{k} {old} (asked: {new})" for k, (old, new) in differ.items())
            raise ValueError(f"{out} holds synthetic data made with {what}; write to another --out, or "
                             "pass --overwrite to replace it")
    record.write_text(json.dumps(wanted))  # (a directory from before this record: taken as it is)


def synth(cfg: SynthConfig, progress: Callable[[str, int], None] | None = None) -> dict:
    """Write ``book.zarr``, ``positions.zarr`` and ``market.zarr`` under ``cfg.out``.

    Days already complete are skipped, so a killed run re-run finishes the same data.
    ``progress(task, advance)`` is called as work completes. Returns a summary dict.
    """
    if cfg.days < 1 or cfg.instruments < 1 or cfg.accounts < 1 or cfg.levels < 1:
        raise ValueError("days, instruments, accounts and levels must be >= 1")
    if cfg.snapshots_per_day < 2:
        raise ValueError("snapshots_per_day must be >= 2")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite:  # only what synth writes: other files in the directory stay
        import shutil  # noqa: PLC0415

        for name in ("book.zarr", "positions.zarr", "market.zarr", "market_history.zarr"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "synth.json").unlink(missing_ok=True)
    _same_settings_as_before(out, cfg)
    book_path, pos_path, mkt_path = out / "book.zarr", out / "positions.zarr", out / "market.zarr"
    store.ensure_store(book_path, "book")
    store.set_store_compression(book_path, cfg.compression)
    instruments = catalog(cfg.instruments)
    underlyings = sorted({i.underlying for i in instruments} | ({"BTC"} if any(
        i.underlying == "BTC" for i in instruments) else set()))
    closes = daily_closes(cfg.seed, cfg.days, underlyings)
    first = np.datetime64(cfg.start, "D")
    days = [first + np.timedelta64(d, "D") for d in range(cfg.days)]
    options = option_instruments(underlyings, first, closes)
    note = progress or (lambda task, n: None)

    for k, inst in enumerate(instruments):
        for d, day in enumerate(days):
            if not store.has_book_day(book_path, inst.name, day):
                c = closes[inst.underlying]
                write_book_day(book_path, inst, k, d, day, c[d], c[d + 1], cfg.snapshots_per_day,
                               cfg.levels, cfg.seed, cfg.book_chunk_rows)
            note("book", 1)
    for d, day in enumerate(days):
        key = store.day_key(day)
        market = market_for_day(instruments, options, closes, d, day)
        if not store.is_complete(mkt_path, key):
            store.write_market(market, mkt_path, key)
        if not store.is_complete(pos_path, key):
            writer = store.positions_writer(pos_path, key, np.arange(cfg.accounts),
                                            list(map(str, market.asset.values)),
                                            list(map(str, market.instrument.values)),
                                            cfg.account_chunk_rows)
            for start in range(0, cfg.accounts, cfg.account_chunk_rows):
                n = min(cfg.account_chunk_rows, cfg.accounts - start)
                slab = account_slab(cfg.seed, d, start, n, market, instruments)
                writer.write(start, slab)
            writer.close()
        note("positions", 1)
    history_path = out / "market_history.zarr"
    if cfg.market_history:
        held = store.market_history_days(history_path)
        for k, inst in enumerate(instruments):
            for d, day in enumerate(days):
                if store.day_key(day) not in held.get(inst.name, []):
                    write_market_history(history_path, inst, k, d, day, closes[inst.underlying], cfg.seed)
    return {"out": str(out), "book": str(book_path), "positions": str(pos_path),
            "market_history": str(history_path) if cfg.market_history else None,
            "market": str(mkt_path), "days": [store.day_key(d) for d in days],
            "instruments": [i.name for i in instruments], "options": [o["name"] for o in options],
            "accounts": cfg.accounts, "snapshots_per_day": cfg.snapshots_per_day,
            "levels": cfg.levels, "seed": cfg.seed}
