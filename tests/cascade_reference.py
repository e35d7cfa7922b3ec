"""Brute-force cascade simulator written from SPEC section 4, in plain Python.

Positions are closed one by one, wave by wave; each wave's sales walk the moved book level
by level, consuming the size left at each level. Nothing is sorted or accumulated in
advance, so it shares no logic with the kernel (only the SPEC's rules and the documented
depth extrapolation).
"""

from __future__ import annotations

import math


def brute_force_cascade(bid_price, bid_size, ask_price, ask_size, s0, quantity, liquidation_price,
                        notional, extrapolation=None, exponent=None):
    """One cascade (``extrapolation``: the flat depth model's step; ``exponent``: the power
    model's gamma, as docs/methodology.md defines them). Returns (final_price,
    liquidated_notional, rounds, book_exhausted, closed), ``closed`` the indices of the
    positions closed."""
    mid = 0.5 * (bid_price[0] + ask_price[0])
    if math.isnan(mid):
        return math.nan, math.nan, 0, False, []
    factor = 1.0 + s0
    selling = s0 < 0
    prices, sizes = (bid_price, bid_size) if selling else (ask_price, ask_size)
    moved = [p * factor for p in prices]
    left = [float(q) if q > 0 and not math.isnan(p) else 0.0 for p, q in zip(prices, sizes)]
    visible = sum(left)
    nonempty = [j for j in range(len(left)) if left[j] > 0]
    start = mid * factor
    p = start
    closed: list[int] = []
    is_closed = [False] * len(quantity)
    rounds, exhausted, beyond, total = 0, False, 0.0, 0.0
    while True:
        wave = []
        for i, (q, lp) in enumerate(zip(quantity, liquidation_price)):
            if is_closed[i] or math.isnan(lp):
                continue
            if (selling and q > 0 and lp >= p) or (not selling and q < 0 and lp <= p):
                wave.append(i)
        if not wave:
            break
        rounds += 1
        volume = 0.0
        for i in wave:
            is_closed[i] = True
            closed.append(i)
            volume += abs(quantity[i])
            total += notional[i]
        deepest_traded = None
        for j in range(len(left)):
            if volume <= 0:
                break
            if left[j] > 0:
                take = min(volume, left[j])
                left[j] -= take
                volume -= take
                deepest_traded = j
        if volume <= 0:
            p = moved[deepest_traded]
            continue
        exhausted = True
        if (extrapolation is None and exponent is None) or visible == 0:
            if nonempty:
                p = moved[nonempty[-1]]
            break
        beyond += volume
        last = moved[nonempty[-1]]
        if exponent is not None:  # cumulative size ~ distance ** gamma through the deepest level
            distance = abs(last - start) * ((visible + beyond) / visible) ** (1 / exponent)
            p = start - distance if selling else start + distance
        else:
            step = beyond / visible * extrapolation * start
            p = last - step if selling else last + step
        p = max(p, 0.0)
    return p, total, rounds, exhausted, closed
