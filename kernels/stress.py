"""Collateral-ratio stress surfaces (SPEC section 3): every account over a grid of common
price shocks x a second axis (implied-vol shifts or haircut add-ons), numba CPU kernel.

The account model is the liquidation family's (``kernels/liquidation.py``: one formula,
``part_margin``); a scenario (s, v) moves every asset price by p (1 + beta s) and every mark
with its underlying, and either adds v to every option's implied vol (floored at 0) or adds
v to the haircut of every asset with beta != 0 (capped at 1). Per account and scenario the
kernel writes the collateral ratio (the lowest of the account's parts) and the account's
full value N = sum of balance x price + PnL (linear, inverse) + option values + isolated
margins, without haircuts or margin; the caller sums max(0, -N) into the shortfall.
Work shared along an axis: an account without options has the same ratio for every vol
shift, so it is computed once per price shock and copied.
"""

from __future__ import annotations

import numpy as np

from ._compile import cpu_kernel
from .liquidation import INVERSE, _part_index, part_margin, position_terms


@cpu_kernel
def full_value(a, t, asset_w, mark_w, balance, position, entry, iso_margin, price, kind, underlying,
               mark, strike, years, vol, is_call, floor, mmr, amount):
    """N: balances at full price, position values (``position_terms``) and isolated margins;
    no haircut, no margin."""
    n = 0.0
    for s in range(balance.shape[1]):
        n += balance[a, s] * price[s] * (1.0 + asset_w[s] * t)
    for i in range(position.shape[1]):
        if position[a, i] == 0.0:
            n += iso_margin[a, i] * (price[underlying[i]] * (1.0 + asset_w[underlying[i]] * t)
                                     if kind[i] == INVERSE else 1.0)
            continue
        value, _mm, margin_unit = position_terms(a, i, t, 0.0, asset_w, mark_w, position, entry, price,
                                                 kind, underlying, mark, strike, years, vol, is_call,
                                                 floor, mmr, amount, False)
        n += value + iso_margin[a, i] * margin_unit
    return n


@cpu_kernel
def stress_cpu(balance, position, entry, iso_margin, isolated, price, haircut, beta, kind, underlying,
               mark, strike, years, vol, is_call, floor, mmr, amount, price_shocks, second,
               second_is_vol, out):
    """out[a, j, k, 0] = collateral ratio, out[a, j, k, 1] = full value N under price shock
    price_shocks[j] and second-axis value second[k]."""
    n_acc, n_inst = position.shape
    n_assets = balance.shape[1]
    n_second = second.shape[0]
    mark_w = np.empty(n_inst)
    for i in range(n_inst):
        mark_w[i] = beta[underlying[i]]
    # the second axis as shocked haircut and vol tables, built once
    haircuts = np.empty((n_second, n_assets))
    vols = np.empty((n_second, n_inst))
    for k in range(n_second):
        for s_i in range(n_assets):
            haircuts[k, s_i] = haircut[s_i]
            if not second_is_vol and beta[s_i] != 0.0:
                haircuts[k, s_i] = min(haircut[s_i] + second[k], 1.0)
        for i in range(n_inst):
            vols[k, i] = max(vol[i] + second[k], 0.0) if second_is_vol else vol[i]
    for a in range(n_acc):
        has_options = False
        n_parts = 1
        for i in range(n_inst):
            if position[a, i] != 0.0:
                if kind[i] == 2:
                    has_options = True
                if isolated[a]:
                    n_parts += 1
        for k in range(n_second):
            if second_is_vol and k > 0 and not has_options:
                for j in range(price_shocks.shape[0]):  # vol moves options only: shared
                    out[a, j, k, 0] = out[a, j, 0, 0]
                    out[a, j, k, 1] = out[a, j, 0, 1]
                continue
            hc = haircuts[k]
            vk = vols[k]
            for j in range(price_shocks.shape[0]):
                s = price_shocks[j]
                ratio = np.inf
                for p_idx in range(n_parts):
                    part = _part_index(a, p_idx, position, isolated)
                    c, r = part_margin(a, part, s, 0.0, beta, mark_w, balance, position, entry,
                                       iso_margin, isolated, price, hc, kind, underlying,
                                       mark, strike, years, vk, is_call, floor, mmr, amount)
                    value = c / r if r > 0.0 else np.inf
                    if value < ratio:
                        ratio = value
                out[a, j, k, 0] = ratio
                out[a, j, k, 1] = full_value(a, s, beta, mark_w, balance, position, entry, iso_margin,
                                             price, kind, underlying, mark, strike, years, vk, is_call,
                                             floor, mmr, amount)
    return out


@cpu_kernel
def _positions_value(a, x, vols, scan, asset_w, mark_w, position, entry, price, kind, underlying, mark,
                     strike, years, is_call, floor, mmr, amount):
    """Value of account a's positions (``position_terms``; USD) when every instrument's
    underlying moves by x times that instrument's own scan range, with implied vols ``vols``."""
    total = 0.0
    for i in range(position.shape[1]):
        if position[a, i] == 0.0:
            continue
        asset_w[underlying[i]] = scan[i]  # this instrument's own move, for its underlying too
        mark_w[i] = scan[i]
        value, _mm, _unit = position_terms(a, i, x, 0.0, asset_w, mark_w, position, entry, price, kind,
                                           underlying, mark, strike, years, vols, is_call, floor, mmr,
                                           amount, False)
        total += value
    return total


@cpu_kernel
def span_cpu(position, entry, price, kind, underlying, mark, strike, years, vol, is_call, scan,
             vol_scan, extreme_multiple, cover, floor, mmr, amount, out):
    """CME SPAN's 16 risk scenarios per account: price 0, +-1/3, +-2/3, +-1 of the scan range,
    each with vol up and down by vol_scan; and +-extreme_multiple scan ranges (vol unchanged)
    with cover x the loss. out[a] = the worst loss (>= 0; USD)."""
    fractions = (0.0, 1.0 / 3.0, -1.0 / 3.0, 2.0 / 3.0, -2.0 / 3.0, 1.0, -1.0)
    asset_w = np.zeros(price.shape[0])
    mark_w = np.zeros(position.shape[1])
    vol_up = np.empty(vol.shape[0])
    vol_down = np.empty(vol.shape[0])
    for i in range(vol.shape[0]):
        vol_up[i] = max(vol[i] + vol_scan, 0.0)
        vol_down[i] = max(vol[i] - vol_scan, 0.0)
    for a in range(position.shape[0]):
        base = _positions_value(a, 0.0, vol, scan, asset_w, mark_w, position, entry, price, kind,
                                underlying, mark, strike, years, is_call, floor, mmr, amount)
        worst = 0.0
        for x in fractions:
            for vols in (vol_up, vol_down):
                value = _positions_value(a, x, vols, scan, asset_w, mark_w, position, entry, price, kind,
                                         underlying, mark, strike, years, is_call, floor, mmr, amount)
                worst = max(worst, base - value)
        for x in (extreme_multiple, -extreme_multiple):
            value = _positions_value(a, x, vol, scan, asset_w, mark_w, position, entry, price, kind,
                                     underlying, mark, strike, years, is_call, floor, mmr, amount)
            worst = max(worst, cover * (base - value))
        out[a] = worst
    return out
