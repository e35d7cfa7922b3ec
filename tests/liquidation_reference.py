"""An independent plain-NumPy evaluator of SPEC section 2's account model (per account,
per scenario, loops), used to check the kernels' roots. Written from SPEC, not from them."""

import math

import numpy as np


def norm_cdf(x):
    # the complementary form keeps full relative accuracy in the lower tail, where deep
    # out-of-the-money values are small differences F N(d1) - K N(d2)
    return 0.5 * math.erfc(-x / math.sqrt(2))


def black76(F, K, T, vol, call):
    if T <= 0 or vol <= 0:
        return max(F - K, 0.0) if call else max(K - F, 0.0)
    d1 = (math.log(F / K) + 0.5 * vol * vol * T) / (vol * math.sqrt(T))
    d2 = d1 - vol * math.sqrt(T)
    return F * norm_cdf(d1) - K * norm_cdf(d2) if call else K * norm_cdf(-d2) - F * norm_cdf(-d1)


def maintenance_margin(notional, floors, rates, amounts):
    k = max(j for j in range(len(floors)) if not np.isnan(floors[j]) and floors[j] <= notional)
    return notional * rates[k] - amounts[k]


def margin_parts(acc, mkt, asset_factor, mark_factor):
    """[(C, R)] of the account's parts: the cross account, or an isolated account's wallet
    then each isolated position. asset_factor (S,), mark_factor (I,) multiply the prices."""
    price = mkt["price"] * asset_factor
    mark = mkt["mark"] * mark_factor
    wallet_c = sum(b * price[s] * (1 - mkt["haircut"][s]) for s, b in enumerate(acc["balance"]) if b > 0)
    wallet_r = sum(-b * price[s] for s, b in enumerate(acc["balance"]) if b < 0)

    def position_terms(i):
        q = acc["position"][i]
        kind, u = mkt["kind"][i], mkt["underlying"][i]
        f = mkt["floor"][i], mkt["mmr"][i], mkt["amount"][i]
        if kind == "linear":
            return q * (mark[i] - acc["entry"][i]), maintenance_margin(abs(q) * mark[i], *f), 1.0
        if kind == "inverse":
            return q * (1 / acc["entry"][i] - 1 / mark[i]) * price[u], maintenance_margin(abs(q), *f), price[u]
        value = black76(price[u], mkt["strike"][i], mkt["years"][i], mkt["vol"][i], mkt["call"][i])
        return q * value, 0.0, 1.0

    held = [i for i, q in enumerate(acc["position"]) if q != 0]
    if not acc["isolated"]:
        c, r = wallet_c, wallet_r
        for i in held:
            pnl, mm, _ = position_terms(i)
            c, r = c + pnl, r + mm
        return [(c, r)]
    parts = [(wallet_c, wallet_r)]
    for i in held:
        pnl, mm, margin_unit = position_terms(i)
        parts.append((acc["iso_margin"][i] * margin_unit + pnl, mm))
    return parts


def gross(acc, mkt, asset_factor, mark_factor):
    """The sum of the absolute sizes of every term of C and R over the whole account: the
    scale of the rounding error of C - R (C and R can be small differences of large terms)."""
    price = mkt["price"] * asset_factor
    mark = mkt["mark"] * mark_factor
    total = sum(abs(b) * price[s] for s, b in enumerate(acc["balance"]))
    for i, q in enumerate(acc["position"]):
        if q == 0:
            continue
        u = mkt["underlying"][i]
        if mkt["kind"][i] == "linear":
            total += abs(q) * (mark[i] + acc["entry"][i])
        elif mkt["kind"][i] == "inverse":
            total += abs(q) * price[u] * (1 / acc["entry"][i] + 1 / mark[i]) + abs(q)
        else:
            total += abs(q) * (price[u] + mkt["strike"][i])
        total += abs(acc["iso_margin"][i]) * (price[u] if mkt["kind"][i] == "inverse" else 1.0)
    return total


def collateral_ratio(acc, mkt):
    ones_s, ones_i = np.ones(len(mkt["price"])), np.ones(len(mkt["mark"]))
    return min((c / r if r > 0 else np.inf) for c, r in margin_parts(acc, mkt, ones_s, ones_i))


def price_scenario(mkt, instrument, f):
    """Instrument's mark and its underlying's price times f, all else fixed."""
    a = np.ones(len(mkt["price"]))
    m = np.ones(len(mkt["mark"]))
    a[mkt["underlying"][instrument]] = f
    m[instrument] = f
    return a, m


def shock_scenario(mkt, s):
    a = 1 + mkt["beta"] * s
    m = 1 + mkt["beta"][mkt["underlying"]] * s
    return a, m
