"""A brute-force portfolio contagion (SPEC section 5, the rules of docs/methodology.md):
every account part evaluated from scratch each wave with the plain account model of
``liquidation_reference``, orders collected one by one, every book walked level by level,
all instruments together. Written from the rules, not from the kernel."""

import math

import numpy as np
from liquidation_reference import black76, margin_parts


def beyond_fill(model, side, start, visible, last, e0, e1, slices=20_000):
    """What trading from ``e0`` to ``e1`` beyond the visible side got in all, summed slice
    by slice at each slice's middle, and the price at ``e1``; the models as
    docs/methodology.md states them ("flat", step) or ("power", gamma), prices floored at 0."""
    kind, value = model

    def price(e):
        if kind == "flat":
            p = last + side * e / visible * value * start
        else:
            p = start + side * abs(last - start) * ((visible + e) / visible) ** (1 / value)
        return max(p, 0.0)

    width = (e1 - e0) / slices
    return sum(price(e0 + (n + 0.5) * width) for n in range(slices)) * width, price(e1)


def contagion_reference(books, accounts, mkt, s0, depth=None):
    """``books``: {instrument index: (bid_price, bid_size, ask_price, ask_size)} unshocked
    level arrays; ``accounts``: dicts (balance, position, entry, iso_margin, isolated);
    ``mkt``: the dict of liquidation_reference plus beta (S,), reference (S,) (-1: none);
    ``depth``: {instrument index: ("flat", step) or ("power", gamma)} beyond the visible
    levels (default: none). Returns per instrument lists (final_price, notional, accounts,
    rounds, exhausted) and the shortfall."""
    depth = depth or {}
    n_inst = len(mkt["kind"])
    beta = mkt["beta"]
    u = mkt["underlying"]
    asset_f = np.array([1 + b * s0 for b in beta])
    factor = np.array([1 + beta[u[i]] * s0 for i in range(n_inst)])
    mid = {i: 0.5 * (b[0][0] + b[2][0]) for i, b in books.items()}
    price = {i: mid[i] * factor[i] for i in books}
    remaining = {i: (list(b[1]), list(b[3])) for i, b in books.items()}
    beyond = {i: [0.0, 0.0] for i in books}  # traded beyond each visible side so far

    def mark_factor():
        out = np.empty(n_inst)
        for i in range(n_inst):
            out[i] = price[i] / mkt["mark"][i] if i in books else asset_f[u[i]]
        return out

    alive = [True] * len(accounts)
    held = [[q != 0 for q in acc["position"]] for acc in accounts]
    notional = [0.0] * n_inst
    liquidated = [0] * n_inst
    rounds = [0] * n_inst
    exhausted = [False] * n_inst
    shortfall = 0.0
    while True:
        g = mark_factor()
        orders = []  # (account, instrument, quantity) one by one
        wallets = []  # accounts whose wallet (cross: whole account) is liquidated
        for a, acc in enumerate(accounts):
            parts = margin_parts(acc, mkt, asset_f, g)
            positions = [i for i, q in enumerate(acc["position"]) if q != 0]
            if not acc["isolated"]:
                c, r = parts[0]
                if alive[a] and c < r:
                    alive[a] = False
                    wallets.append(a)
                    for i in positions:
                        if held[a][i]:
                            held[a][i] = False
                            orders.append((a, i, acc["position"][i]))
                continue
            c, r = parts[0]
            if alive[a] and c < r:
                alive[a] = False
                wallets.append(a)
            for (c, r), i in zip(parts[1:], positions):
                if held[a][i] and c < r:
                    held[a][i] = False
                    orders.append((a, i, acc["position"][i]))
        if not orders and not wallets:
            break
        fills = {}
        for i in range(n_inst):
            mine = [q for _, j, q in orders if j == i]
            if not mine:
                continue
            rounds[i] += 1
            sold = sum(q for q in mine if q > 0)
            bought = sum(-q for q in mine if q < 0)
            if i not in books:
                fills[i] = (None, None)
                continue
            before = price[i]
            matched = min(sold, bought)
            net = sold - bought
            side = 0 if net > 0 else 1
            levels = books[i][0 if side == 0 else 2] * factor[i]
            left, cost, last = abs(net), 0.0, before
            for j in range(len(levels)):  # level by level from the best
                if left <= 0:
                    break
                size = remaining[i][side][j]
                if not size > 0 or math.isnan(levels[j]):
                    continue
                take = min(size, left)
                remaining[i][side][j] -= take
                cost += take * levels[j]
                left -= take
                last = levels[j]
            if left > 0:
                exhausted[i] = True
                sizes = [q for p, q in zip(books[i][0 if side == 0 else 2], books[i][1 if side == 0 else 3])
                         if q > 0 and not math.isnan(p)]
                deepest = [p for p, q in zip(levels, books[i][1 if side == 0 else 3]) if q > 0 and not math.isnan(p)]
                if i in depth and sizes:
                    e0 = beyond[i][side]
                    got, last = beyond_fill(depth[i], -1.0 if side == 0 else 1.0, mid[i] * factor[i], sum(sizes),
                                            deepest[-1], e0, e0 + left)
                    beyond[i][side] = e0 + left
                    cost += got
                else:
                    cost += left * last
            vwap = cost / abs(net) if net != 0 else before
            price[i] = last
            if net > 0:
                fills[i] = ((matched * before + net * vwap) / sold, before)
            elif net < 0:
                fills[i] = (before, (matched * before - net * vwap) / bought)
            else:
                fills[i] = (before, before)
        value = {a: sum(b * mkt["price"][s] * asset_f[s] for s, b in enumerate(accounts[a]["balance"]))
                 for a in wallets}
        for a, i, q in orders:
            acc = accounts[a]
            coin = mkt["price"][u[i]] * asset_f[u[i]]
            liquidated[i] += 1
            if mkt["kind"][i] == "option":
                unit = black76(coin, mkt["strike"][i], mkt["years"][i], mkt["vol"][i], mkt["call"][i])
                pnl = q * unit
                notional[i] += abs(q) * unit
            else:
                fill = fills[i][0] if q > 0 else fills[i][1]
                if mkt["kind"][i] == "linear":
                    pnl = q * (fill - acc["entry"][i])
                    notional[i] += abs(q) * fill
                else:
                    pnl = q * (1 / acc["entry"][i] - 1 / fill) * coin
                    notional[i] += abs(q)
            if acc["isolated"]:
                unit = coin if mkt["kind"][i] == "inverse" else 1.0
                shortfall += max(0.0, -(acc["iso_margin"][i] * unit + pnl))
            else:
                value[a] = value.get(a, 0.0) + pnl
        shortfall += sum(max(0.0, -v) for v in value.values())
        for s, ref in enumerate(mkt["reference"]):
            if ref >= 0:
                asset_f[s] = price[ref] / mid[ref]
    final = [price[i] if i in books else mkt["mark"][i] * asset_f[u[i]] for i in range(n_inst)]
    return final, notional, liquidated, rounds, exhausted, shortfall
