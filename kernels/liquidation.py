"""The account model (SPEC section 2) and its roots: collateral value C, requirement R,
liquidation prices and common-shock thresholds, per account (numba CPU kernels).

Data of one chunk of accounts (A accounts, S assets, I instruments, K brackets):

    balance (A, S), position (A, I), entry_price (A, I), isolated_margin (A, I),
    isolated (A) bool                                       -- the accounts
    price, haircut (S); kind (I) int (0 linear, 1 inverse, 2 option); underlying (I) int
    (index into the assets); mark (I); strike, years, vol (I); is_call (I) bool;
    floor, mmr, amount (I, K) with NaN for unused brackets   -- the market

A scenario is a factor per asset and per instrument mark; along a path parameterised by t
these are ``1 + asset_w (t - t0)`` and ``1 + mark_w (t - t0)``:

* liquidation price of instrument i: t = f, t0 = 1, asset_w = 1 for i's underlying, mark_w
  = 1 for i only (SPEC: "the mark of this instrument, its underlying asset's price moving
  by the same factor, every other price fixed");
* common shock: t = s, t0 = 0, asset_w = beta, mark_w = the beta of each instrument's
  underlying.

C(t) = sum_{b>0} b p f (1 - h) + sum_j PnL_j and R(t) = sum_{b<0} |b| p f + sum_j MM_j, with
linear PnL q (m f - e), inverse PnL q (1/e - 1/(m f)) p_coin f_coin (in coin, valued at the
coin = underlying's price), option value q Black76(F = p_u f_u, K, T, vol) (options carry no
maintenance margin), MM = |notional| mmr_k - amount_k in the bracket with the largest floor
<= |notional| (linear notional |q| m f; inverse |q| USD). An isolated account is a wallet
(its balances) plus one part per open position: C_i = isolated margin (USD; coin for an
inverse position, valued at the coin's price) + PnL_i, R_i = MM_i (Binance's isolated
formula); it is liquidated when any part is.

Without options on a moving underlying, C - R is piecewise linear in t with kinks where a
notional crosses a bracket floor: the kernel finds every kink, evaluates C - R there and
solves each linear piece in closed form (so the bracket is re-checked at the root); with
options it subdivides the pieces and bisects to 1e-13 relative. The root nearest t0 wins.
"""

from __future__ import annotations

import math

import numpy as np

from ._compile import cpu_kernel
from .pricing import black76_price

LINEAR, INVERSE, OPTION = 0, 1, 2
MAX_KINKS = 512
OPTION_STEPS = 64  # sub-steps per piece where an option makes C - R curved


@cpu_kernel
def maintenance(notional, floor, mmr, amount, i):
    """|notional| mmr - amount in the bracket with the largest floor <= |notional|."""
    k_best = 0
    for k in range(floor.shape[1]):
        f = floor[i, k]
        if f == f and f <= notional:
            k_best = k
    return notional * mmr[i, k_best] - amount[i, k_best]


@cpu_kernel
def part_margin(a, part, t, t0, asset_w, mark_w, balance, position, entry, iso_margin, isolated,
                price, haircut, kind, underlying, mark, strike, years, vol, is_call,
                floor, mmr, amount):
    """(C, R) of account a's part along the path at t: part -1 is the cross account (or the
    wallet of an isolated account), part i >= 0 the isolated position in instrument i."""
    c = 0.0
    r = 0.0
    n_inst = position.shape[1]
    if part < 0:
        for s in range(balance.shape[1]):
            b = balance[a, s]
            if b != 0.0:
                p = price[s] * (1.0 + asset_w[s] * (t - t0))
                if b > 0.0:
                    c += b * p * (1.0 - haircut[s])
                else:
                    r -= b * p
        if isolated[a]:
            return c, r
    for i in range(n_inst):
        if part >= 0 and i != part:
            continue
        q = position[a, i]
        if q == 0.0:
            if part >= 0:
                c += iso_margin[a, i]
            continue
        u = underlying[i]
        f_u = 1.0 + asset_w[u] * (t - t0)
        m = mark[i] * (1.0 + mark_w[i] * (t - t0))
        k = kind[i]
        if k == LINEAR:
            c += q * (m - entry[a, i])
            r += maintenance(abs(q) * m, floor, mmr, amount, i)
            if part >= 0:
                c += iso_margin[a, i]
        elif k == INVERSE:
            coin = price[u] * f_u
            c += q * (1.0 / entry[a, i] - 1.0 / m) * coin
            r += maintenance(abs(q), floor, mmr, amount, i)
            if part >= 0:
                c += iso_margin[a, i] * coin
        else:
            forward = price[u] * f_u
            c += q * black76_price(forward, strike[i], years[i], vol[i], is_call[i], 0.0)
            if part >= 0:
                c += iso_margin[a, i]
    return c, r


@cpu_kernel
def _gap(a, part, t, t0, asset_w, mark_w, balance, position, entry, iso_margin, isolated, price,
         haircut, kind, underlying, mark, strike, years, vol, is_call, floor, mmr, amount):
    c, r = part_margin(a, part, t, t0, asset_w, mark_w, balance, position, entry, iso_margin,
                       isolated, price, haircut, kind, underlying, mark, strike, years, vol,
                       is_call, floor, mmr, amount)
    if r <= 0.0:
        return 1.0  # nothing required: C/R is infinite, never liquidated (SPEC), whatever C is
    return c - r


@cpu_kernel
def nearest_root(a, part, t0, lo, hi, asset_w, mark_w, balance, position, entry, iso_margin,
                 isolated, price, haircut, kind, underlying, mark, strike, years, vol, is_call,
                 floor, mmr, amount, kinks, side):
    """The root of C - R in [lo, t0] (side -1, the nearest below t0) or [t0, hi] (side +1);
    NaN if none. ``kinks`` is scratch space (MAX_KINKS,)."""
    n_inst = position.shape[1]
    curved = False
    n_k = 0
    kinks[n_k] = t0
    n_k += 1
    kinks[n_k] = lo if side < 0 else hi
    n_k += 1
    for i in range(n_inst):
        if part >= 0 and i != part:
            continue
        q = position[a, i]
        if q == 0.0:
            continue
        if kind[i] == OPTION:
            if asset_w[underlying[i]] != 0.0:
                curved = True
            continue
        if kind[i] == LINEAR and mark_w[i] != 0.0:
            for k in range(1, floor.shape[1]):
                fl = floor[i, k]
                if fl == fl and n_k < MAX_KINKS:
                    # |q| m (1 + w (t - t0)) = floor
                    t = t0 + (fl / (abs(q) * mark[i]) - 1.0) / mark_w[i]
                    if (side < 0 and lo < t < t0) or (side > 0 and t0 < t < hi):
                        kinks[n_k] = t
                        n_k += 1
    # insertion sort in place (a handful of kinks; no allocation), walked away from t0
    for x in range(1, n_k):
        v = kinks[x]
        y = x - 1
        while y >= 0 and kinks[y] > v:
            kinks[y + 1] = kinks[y]
            y -= 1
        kinks[y + 1] = v
    first = 0 if side > 0 else n_k - 1
    g_near = _gap(a, part, kinks[first], t0, asset_w, mark_w, balance, position, entry, iso_margin,
                  isolated, price, haircut, kind, underlying, mark, strike, years, vol, is_call,
                  floor, mmr, amount)
    if g_near == 0.0:
        return kinks[first]
    for j in range(1, n_k):
        t_near = kinks[j - 1] if side > 0 else kinks[n_k - j]
        t_far = kinks[j] if side > 0 else kinks[n_k - 1 - j]
        steps = OPTION_STEPS if curved else 1
        for step in range(1, steps + 1):
            t_b = t_near + (t_far - t_near) * step / steps
            t_a = t_near + (t_far - t_near) * (step - 1) / steps
            g_a = g_near
            g_b = _gap(a, part, t_b, t0, asset_w, mark_w, balance, position, entry, iso_margin,
                       isolated, price, haircut, kind, underlying, mark, strike, years, vol,
                       is_call, floor, mmr, amount)
            if g_b == 0.0:
                return t_b
            if (g_a < 0.0) != (g_b < 0.0):
                if not curved:  # linear on this piece: the closed form
                    return t_a + g_a * (t_b - t_a) / (g_a - g_b)
                # bisection down to adjacent floats, then the endpoint nearer zero
                x0, x1, g0, g1 = t_a, t_b, g_a, g_b
                for _ in range(1100):
                    mid = 0.5 * (x0 + x1)
                    if mid == x0 or mid == x1:
                        break
                    gm = _gap(a, part, mid, t0, asset_w, mark_w, balance, position, entry,
                              iso_margin, isolated, price, haircut, kind, underlying, mark,
                              strike, years, vol, is_call, floor, mmr, amount)
                    if gm == 0.0:
                        return mid
                    if (gm < 0.0) == (g0 < 0.0):
                        x0, g0 = mid, gm
                    else:
                        x1, g1 = mid, gm
                return x0 if abs(g0) <= abs(g1) else x1
            g_near = g_b
    return np.nan


@cpu_kernel
def liquidation_cpu(balance, position, entry, iso_margin, isolated, price, haircut, beta, kind,
                    underlying, mark, strike, years, vol, is_call, floor, mmr, amount,
                    f_lo, f_hi, s_lo, s_hi, out):
    """For each account a: out[a, 0] collateral ratio, out[a, 1] shock down, out[a, 2] shock
    up, out[a, 3 + i] liquidation price of instrument i (mark currency)."""
    n_acc, n_inst = position.shape
    n_assets = balance.shape[1]
    kinks = np.empty(MAX_KINKS)
    asset_w = np.zeros(n_assets)
    mark_w = np.zeros(n_inst)
    shock_asset_w = beta.copy()
    shock_mark_w = np.empty(n_inst)
    for i in range(n_inst):
        shock_mark_w[i] = beta[underlying[i]]
    # every price must stay positive: 1 + beta s > 0 for the largest beta (s down) and the
    # most negative beta (s up)
    beta_max = 0.0
    beta_min = 0.0
    for s_i in range(n_assets):
        beta_max = max(beta_max, beta[s_i])
        beta_min = min(beta_min, beta[s_i])
    if beta_max > 0.0:
        s_lo = max(s_lo, -(1.0 - 1e-9) / beta_max)
    if beta_min < 0.0:
        s_hi = min(s_hi, (1.0 - 1e-9) / -beta_min)
    for a in range(n_acc):
        n_parts = 1
        if isolated[a]:
            for i in range(n_inst):
                if position[a, i] != 0.0:
                    n_parts += 1
        # collateral ratio: the lowest of the account's parts
        ratio = np.inf
        for p_idx in range(n_parts):
            part = _part_index(a, p_idx, position, isolated)
            c, r = part_margin(a, part, 0.0, 0.0, asset_w, mark_w, balance, position, entry,
                               iso_margin, isolated, price, haircut, kind, underlying, mark,
                               strike, years, vol, is_call, floor, mmr, amount)
            value = c / r if r > 0.0 else np.inf
            if value < ratio:
                ratio = value
        out[a, 0] = ratio
        # common shocks: the nearest over the parts, on each side
        for col, side, lo, hi in ((1, -1, s_lo, 0.0), (2, 1, 0.0, s_hi)):
            best = np.nan
            for p_idx in range(n_parts):
                part = _part_index(a, p_idx, position, isolated)
                s = nearest_root(a, part, 0.0, lo, hi, shock_asset_w, shock_mark_w, balance,
                                 position, entry, iso_margin, isolated, price, haircut, kind,
                                 underlying, mark, strike, years, vol, is_call, floor, mmr,
                                 amount, kinks, side)
                if s == s and not (best == best and abs(best) <= abs(s)):
                    best = s
            out[a, col] = best
        # liquidation price of each instrument the account is exposed to
        for i in range(n_inst):
            u = underlying[i]
            if not _exposed(a, i, balance, position, kind, underlying):
                out[a, 3 + i] = np.nan
                continue
            asset_w[u] = 1.0
            mark_w[i] = 1.0
            best = np.nan
            for p_idx in range(n_parts):
                part = _part_index(a, p_idx, position, isolated)
                if part >= 0 and part != i:
                    continue  # another isolated position does not see this price
                for side in (-1, 1):
                    f = nearest_root(a, part, 1.0, f_lo if side < 0 else 1.0, f_hi if side > 0 else 1.0,
                                     asset_w, mark_w, balance, position, entry, iso_margin,
                                     isolated, price, haircut, kind, underlying, mark, strike,
                                     years, vol, is_call, floor, mmr, amount, kinks, side)
                    if f == f and f > 0.0 and not (best == best and abs(best - 1.0) <= abs(f - 1.0)):
                        best = f
            out[a, 3 + i] = best * mark[i]
            asset_w[u] = 0.0
            mark_w[i] = 0.0
    return out


@cpu_kernel
def _exposed(a, i, balance, position, kind, underlying):
    """Whether account a's C - R moves with instrument i's mark and underlying: it holds i,
    holds or owes the underlying, or holds an inverse perpetual or option on it (other
    linear marks stay fixed on this path)."""
    if position[a, i] != 0.0:
        return True
    u = underlying[i]
    if balance[a, u] != 0.0:
        return True
    for j in range(position.shape[1]):
        if position[a, j] != 0.0 and underlying[j] == u and kind[j] != LINEAR:
            return True
    return False


@cpu_kernel
def _part_index(a, p_idx, position, isolated):
    """Part p_idx of account a: 0 is the cross account or wallet (-1), then the isolated
    positions in instrument order."""
    if p_idx == 0:
        return -1
    seen = 0
    for i in range(position.shape[1]):
        if position[a, i] != 0.0:
            seen += 1
            if seen == p_idx:
                return i
    return -1
