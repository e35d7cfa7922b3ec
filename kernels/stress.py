"""Collateral-ratio stress surfaces (SPEC section 3): every account over a grid of common
price shocks x a second axis (implied-vol shifts or haircut add-ons); numba CPU kernel and
CUDA kernel side by side.

The account model is the liquidation family's (``kernels/liquidation.py``: one formula for a
position, ``instrument_terms``; one for an account part, ``part_margin``); a scenario (s, v)
moves every asset price by p (1 + beta s) and every mark with its underlying, and either adds
v to every option's implied vol (floored at 0) or adds v to the haircut of every asset with
beta != 0 (capped at 1). Per account and scenario: the collateral ratio (the lowest of the
account's parts) and the full value N = sum of balance x price + PnL (linear, inverse) +
option values + isolated margins, without haircuts or margin. The CPU kernel reduces them
in place (accounts with ratio < 1, shortfall = sum of max(0, -N), each account's worst
ratio) and writes the ratios only when asked; the CUDA kernel writes ratio and N per
scenario and CuPy reduces them.
"""

from __future__ import annotations

import numpy as np

from ._compile import cpu_inline, cpu_kernel, cuda_module, cupy_module
from .liquidation import (
    CUDA_OPTIONS,
    CUDA_SOURCE,
    INVERSE,
    OPTION,
    check_gpu_capacity,
    device_market,
    instrument_terms,
)


@cpu_kernel
def _second_axis_tables(haircut, vol, beta, second, second_is_vol):
    """The second axis as shocked haircut (K, S) and vol (K, I) tables, built once."""
    n_second = second.shape[0]
    haircuts = np.empty((n_second, haircut.shape[0]))
    vols = np.empty((n_second, vol.shape[0]))
    for k in range(n_second):
        for s_i in range(haircut.shape[0]):
            haircuts[k, s_i] = haircut[s_i]
            if not second_is_vol and beta[s_i] != 0.0:
                haircuts[k, s_i] = min(haircut[s_i] + second[k], 1.0)
        for i in range(vol.shape[0]):
            vols[k, i] = max(vol[i] + second[k], 0.0) if second_is_vol else vol[i]
    return haircuts, vols


@cpu_inline
def _record(a, j, k, ratio, value, surface, totals, worst):
    """One scenario's result: into the surface (if kept), the chunk's totals (accounts with
    ratio < 1; shortfall max(0, -N)) and the account's worst ratio."""
    if surface.shape[0] > 0:
        surface[a, j, k] = ratio
    if ratio < 1.0:
        totals[j, k, 0] += 1.0
    if value < 0.0:
        totals[j, k, 1] -= value
    if ratio < worst[a]:
        worst[a] = ratio


@cpu_kernel
def stress_cpu(balance, position, entry, iso_margin, isolated, exclude, m, price_shocks, second,
               second_is_vol, surface, totals, worst):
    """Every account of a chunk under every scenario (price_shocks[j], second[k]).

    Writes ``worst[a]`` (lowest ratio over the grid; NaN for excluded accounts), adds the
    chunk's ``totals[j, k, 0]`` (accounts with ratio < 1) and ``totals[j, k, 1]`` (shortfall,
    sum of max(0, -N), USD), and, when ``surface`` has rows, ``surface[a, j, k]`` = the
    ratio. Nothing of size accounts x scenarios is allocated here. ``m``: the market
    (:class:`~gpu_risk.kernels.liquidation.Market`).

    N is the sum of balance x price, then of position values and isolated margins in slot
    order (as the CUDA kernel's ``full_value``). Work shared along the axes (the arithmetic
    per scenario is exactly ``part_margin``'s and N's, in the same order, so results do not
    depend on the sharing): perpetual terms (PnL, maintenance margin) depend on the price
    shock only and are computed once per shock; option values once per (shock, vol shift);
    an account without options has the same ratio and value for every vol shift.
    """
    price, haircut, beta, kind, underlying, mark, strike, years, vol, is_call, floor, mmr, amount = m
    n_acc, n_inst = position.shape
    n_assets = balance.shape[1]
    n_shocks = price_shocks.shape[0]
    n_second = second.shape[0]
    mark_w = np.empty(n_inst)
    for i in range(n_inst):
        mark_w[i] = beta[underlying[i]]
    haircuts, vols = _second_axis_tables(haircut, vol, beta, second, second_is_vol)
    # accounts whose ratio and value do not depend on the second axis (no options, vol
    # axis) are summed once per price shock here, and added to every column at the end
    shared = np.zeros((n_shocks, 2))
    # every price, mark and coin under every price shock, once for all accounts (the same
    # expressions as part_margin's and N's, so the results are theirs to the bit),
    # laid out (asset or instrument, shock): the shock loop is innermost
    price_t = np.empty((n_assets, n_shocks))
    factor_t = np.empty((n_assets, n_shocks))
    mark_t = np.empty((n_inst, n_shocks))
    coin_t = np.empty((n_inst, n_shocks))
    for j in range(n_shocks):
        s = price_shocks[j]
        for s_i in range(n_assets):
            factor_t[s_i, j] = 1.0 + beta[s_i] * s
            price_t[s_i, j] = price[s_i] * (1.0 + beta[s_i] * (s - 0.0))
        for i in range(n_inst):
            u = underlying[i]
            mark_t[i, j] = mark[i] * (1.0 + mark_w[i] * (s - 0.0))
            coin_t[i, j] = price[u] * (1.0 + beta[u] * (s - 0.0))
    pv = np.empty((n_inst, n_shocks))
    pm = np.empty((n_inst, n_shocks))
    pu = np.empty((n_inst, n_shocks))
    c_j = np.empty(n_shocks)
    r_j = np.empty(n_shocks)
    value_j = np.empty(n_shocks)
    ratio_j = np.empty(n_shocks)
    open_idx = np.empty(n_inst, dtype=np.int64)
    extra_idx = np.empty(n_inst, dtype=np.int64)  # empty slots with an isolated margin
    held_idx = np.empty(n_assets, dtype=np.int64)  # assets with a balance
    for a in range(n_acc):
        if exclude[a]:
            worst[a] = np.nan
            if surface.shape[0] > 0:
                surface[a] = np.nan
            continue
        worst[a] = np.inf
        has_options = False
        n_open = 0
        n_extra = 0
        for i in range(n_inst):
            if position[a, i] != 0.0:
                open_idx[n_open] = i
                n_open += 1
                if kind[i] == OPTION:
                    has_options = True
            elif iso_margin[a, i] != 0.0:
                extra_idx[n_extra] = i
                n_extra += 1
        n_held = 0
        for s_i in range(n_assets):
            if balance[a, s_i] != 0.0:
                held_idx[n_held] = s_i
                n_held += 1
        # every price shock at once: the shock loop is innermost, so the shocks' independent
        # arithmetic overlaps; each scenario's operations and their order are still
        # part_margin's and N's
        one_column = second_is_vol and not has_options  # the same ratio for every vol shift
        vol_moves_values = second_is_vol and has_options  # option values per vol shift
        for o in range(n_open):  # position terms at the market's vols
            i = open_idx[o]
            q = position[a, i]
            entry_ai = entry[a, i]
            k_i = kind[i]
            for j in range(n_shocks):
                pv[o, j], pm[o, j], pu[o, j] = instrument_terms(q, entry_ai, k_i, mark_t[i, j], coin_t[i, j], strike[i],
                                                                years[i], vol[i], is_call[i], floor, mmr, amount,
                                                                i, True)
        for k in range(1 if one_column else n_second):
            if vol_moves_values:  # the options at this vol shift
                for o in range(n_open):
                    i = open_idx[o]
                    if kind[i] == OPTION:
                        for j in range(n_shocks):
                            pv[o, j], pm[o, j], pu[o, j] = instrument_terms(
                                position[a, i], entry[a, i], kind[i], mark_t[i, j], coin_t[i, j], strike[i],
                                years[i], vols[k, i], is_call[i], floor, mmr, amount, i, True)
            if k == 0 or vol_moves_values:
                # the full value N: balances, then positions and isolated margins in slot order
                value_j[:] = 0.0
                for h in range(n_held):
                    s_i = held_idx[h]
                    bp = balance[a, s_i] * price[s_i]
                    for j in range(n_shocks):
                        value_j[j] += bp * factor_t[s_i, j]
                o = 0
                x = 0
                for _ in range(n_open + n_extra):
                    if x >= n_extra or (o < n_open and open_idx[o] < extra_idx[x]):
                        iso = iso_margin[a, open_idx[o]]
                        for j in range(n_shocks):
                            value_j[j] += pv[o, j] + iso * pu[o, j]
                        o += 1
                    else:
                        i = extra_idx[x]
                        iso = iso_margin[a, i]
                        for j in range(n_shocks):
                            value_j[j] += iso * (coin_t[i, j] if kind[i] == INVERSE else 1.0)
                        x += 1
            c_j[:] = 0.0
            r_j[:] = 0.0
            for h in range(n_held):
                s_i = held_idx[h]
                b = balance[a, s_i]
                if b > 0.0:
                    kept = 1.0 - haircuts[k, s_i]
                    for j in range(n_shocks):
                        c_j[j] += b * price_t[s_i, j] * kept
                else:
                    for j in range(n_shocks):
                        r_j[j] -= b * price_t[s_i, j]
            if isolated[a]:  # the wallet and each isolated position are parts: the lowest wins
                for j in range(n_shocks):
                    ratio_j[j] = c_j[j] / r_j[j] if r_j[j] > 0.0 else np.inf
                for o in range(n_open):
                    iso = iso_margin[a, open_idx[o]]
                    for j in range(n_shocks):
                        part_r = pm[o, j]
                        part_c = pv[o, j] + iso * pu[o, j]
                        part_ratio = part_c / part_r if part_r > 0.0 else np.inf
                        if part_ratio < ratio_j[j]:
                            ratio_j[j] = part_ratio
            else:
                for o in range(n_open):
                    for j in range(n_shocks):
                        c_j[j] += pv[o, j]
                        r_j[j] += pm[o, j]
                for j in range(n_shocks):
                    ratio_j[j] = c_j[j] / r_j[j] if r_j[j] > 0.0 else np.inf
            for j in range(n_shocks):
                if one_column:
                    if surface.shape[0] > 0:
                        for kk in range(surface.shape[2]):
                            surface[a, j, kk] = ratio_j[j]
                    if ratio_j[j] < 1.0:
                        shared[j, 0] += 1.0
                    if value_j[j] < 0.0:
                        shared[j, 1] -= value_j[j]
                    if ratio_j[j] < worst[a]:
                        worst[a] = ratio_j[j]
                else:
                    _record(a, j, k, ratio_j[j], value_j[j], surface, totals, worst)
    for j in range(n_shocks):
        for k in range(n_second):
            totals[j, k, 0] += shared[j, 0]
            totals[j, k, 1] += shared[j, 1]
    return worst


@cpu_kernel
def span_cpu(position, entry, m, scan, vol_scan, extreme_multiple, cover, out):
    """CME SPAN's 16 risk scenarios per account: price 0, +-1/3, +-2/3, +-1 of the scan range,
    each with vol up and down by vol_scan; and +-extreme_multiple scan ranges (vol unchanged)
    with cover x the loss. Every instrument's underlying moves by x times that instrument's
    own scan range. out[a] = the worst loss of the positions (>= 0; USD).

    The marks and underlyings of every scenario are tabulated once; a perpetual's value
    does not depend on vol, so an account without options is valued once per price move."""
    price, haircut, beta, kind, underlying, mark, strike, years, vol, is_call, floor, mmr, amount = m
    moves = np.array([0.0, 1.0 / 3.0, -1.0 / 3.0, 2.0 / 3.0, -2.0 / 3.0, 1.0, -1.0,
                      extreme_multiple, -extreme_multiple])  # moves[0] is also the base
    n_moves = moves.shape[0]
    n_inst = position.shape[1]
    vols = np.empty((3, n_inst))  # unchanged, up, down
    for i in range(n_inst):
        vols[0, i] = vol[i]
        vols[1, i] = max(vol[i] + vol_scan, 0.0)
        vols[2, i] = max(vol[i] - vol_scan, 0.0)
    mark_x = np.empty((n_moves, n_inst))
    coin_x = np.empty((n_moves, n_inst))
    for x_i in range(n_moves):
        for i in range(n_inst):
            mark_x[x_i, i] = mark[i] * (1.0 + scan[i] * (moves[x_i] - 0.0))
            coin_x[x_i, i] = price[underlying[i]] * (1.0 + scan[i] * (moves[x_i] - 0.0))
    totals = np.empty((n_moves, 3))
    for a in range(position.shape[0]):
        has_options = False
        for i in range(n_inst):
            if position[a, i] != 0.0 and kind[i] == 2:
                has_options = True
        for x_i in range(n_moves):
            for v_i in range(3 if has_options else 1):
                total = 0.0
                for i in range(n_inst):
                    if position[a, i] != 0.0:
                        value, _mm, _unit = instrument_terms(
                            position[a, i], entry[a, i], kind[i], mark_x[x_i, i], coin_x[x_i, i], strike[i],
                            years[i], vols[v_i, i], is_call[i], floor, mmr, amount, i, False)
                        total += value
                totals[x_i, v_i] = total
            if not has_options:
                totals[x_i, 1] = totals[x_i, 0]
                totals[x_i, 2] = totals[x_i, 0]
        base = totals[0, 0]
        worst = 0.0
        for x_i in range(7):
            worst = max(worst, base - totals[x_i, 1])
            worst = max(worst, base - totals[x_i, 2])
        for x_i in range(7, 9):
            worst = max(worst, cover * (base - totals[x_i, 0]))
        out[a] = worst
    return out


STRESS_CUDA_SOURCE = r"""
__device__ double full_value(const Model& m, long long a, double t, const double* asset_w, const double* mark_w) {
    double n = 0.0;
    for (int s = 0; s < m.n_assets; ++s) n += m.balance[a * m.n_assets + s] * m.price[s] * (1.0 + asset_w[s] * t);
    for (int i = 0; i < m.n_inst; ++i) {
        double q = m.position[a * m.n_inst + i];
        double iso = m.iso_margin[a * m.n_inst + i];
        int u = (int)m.underlying[i];
        double coin = m.price[u] * (1.0 + asset_w[u] * t);
        if (q == 0.0) { n += iso * (m.kind[i] == INVERSE ? coin : 1.0); continue; }
        double mk = m.mark[i] * (1.0 + mark_w[i] * t);
        if (m.kind[i] == LINEAR) n += q * (mk - m.entry[a * m.n_inst + i]) + iso * 1.0;
        else if (m.kind[i] == INVERSE) n += q * (1.0 / m.entry[a * m.n_inst + i] - 1.0 / mk) * coin + iso * coin;
        else n += q * black76(coin, m.strike[i], m.years[i], m.vol[i], m.is_call[i]) + iso * 1.0;
    }
    return n;
}

// One thread per (account, price shock): the ratio (lowest part) and full value N for every
// value of the second axis (haircut and vol tables (K, S) and (K, I)), as stress_cpu.
extern "C" __global__ void stress_gpu(
    const double* balance, const double* position, const double* entry, const double* iso_margin,
    const bool* isolated, const bool* exclude, const double* price, const double* haircuts,
    const double* beta, const long long* kind, const long long* underlying, const double* mark,
    const double* strike, const double* years, const double* vols, const bool* is_call,
    const double* floor, const double* mmr, const double* amount, const double* price_shocks,
    int n_acc, int n_assets, int n_inst, int n_brackets, int n_shocks, int n_second, int second_is_vol,
    double* ratio_out, double* value_out)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n_acc * n_shocks) return;
    long long a = idx / n_shocks;
    int j = (int)(idx % n_shocks);
    double* ratio_row = ratio_out + idx * n_second;
    double* value_row = value_out + idx * n_second;
    if (exclude[a]) {
        for (int k = 0; k < n_second; ++k) { ratio_row[k] = CUDART_NAN; value_row[k] = CUDART_NAN; }
        return;
    }
    double mark_w[MAX_INST];
    for (int i = 0; i < n_inst; ++i) mark_w[i] = beta[underlying[i]];
    int n_parts = 1;
    if (isolated[a]) for (int i = 0; i < n_inst; ++i) if (position[a * n_inst + i] != 0.0) ++n_parts;
    // a vol shift moves options only: an account without options has one column (as stress_cpu)
    bool one_column = second_is_vol;
    for (int i = 0; i < n_inst && one_column; ++i)
        if (kind[i] == OPTION && position[a * n_inst + i] != 0.0) one_column = false;
    double s = price_shocks[j];
    for (int k = 0; k < n_second; ++k) {
        if (one_column && k > 0) { ratio_row[k] = ratio_row[0]; value_row[k] = value_row[0]; continue; }
        Model m = {balance, position, entry, iso_margin, isolated, price, haircuts + (long long)k * n_assets,
                   beta, kind, underlying, mark, strike, years, vols + (long long)k * n_inst, is_call, floor,
                   mmr, amount, n_assets, n_inst, n_brackets};
        double ratio = CUDART_INF;
        for (int p = 0; p < n_parts; ++p) {
            double c, r;
            part_margin(m, a, part_index(m, a, p), s, 0.0, beta, mark_w, &c, &r);
            double v = r > 0.0 ? c / r : CUDART_INF;
            if (v < ratio) ratio = v;
        }
        ratio_row[k] = ratio;
        value_row[k] = full_value(m, a, s, beta, mark_w);
    }
}
"""


def stress_gpu(balance, position, entry, iso_margin, isolated, exclude, m, price_shocks, second,
               second_is_vol, surface, totals, worst):
    """CuPy: ``stress_cpu``'s contract on the device (account arrays and the outputs CuPy;
    ``m`` and the grid anywhere). ``totals`` is added to, as on the CPU."""
    cp = cupy_module()
    n_acc, n_inst = position.shape
    check_gpu_capacity(balance.shape[1], n_inst)
    is_vol = bool(second_is_vol)
    keep_surface = surface.shape[0] > 0
    host = lambda x: x.get() if hasattr(x, "get") else np.asarray(x)  # noqa: E731
    haircuts, vols = _second_axis_tables(host(m.haircut), host(m.vol), host(m.beta),
                                         np.ascontiguousarray(host(second), np.float64), is_vol)
    f64 = lambda x: cp.ascontiguousarray(cp.asarray(x, dtype=cp.float64))  # noqa: E731
    flag = lambda x: cp.ascontiguousarray(cp.asarray(x, dtype=cp.bool_).ravel())  # noqa: E731
    n_shocks, n_second = len(price_shocks), len(second)
    ratio = surface if keep_surface else cp.empty((n_acc, n_shocks, n_second))
    value = cp.empty((n_acc, n_shocks, n_second))
    # the CUDA model reads the second axis' tables in place of the haircuts and vols
    market = device_market(cp, m)._replace(haircut=f64(haircuts), vol=f64(vols))
    args = [f64(balance), f64(position), f64(entry), f64(iso_margin), flag(isolated), flag(exclude),
            *market, f64(price_shocks)]
    threads = 128
    total = n_acc * n_shocks
    cuda_module(CUDA_SOURCE + STRESS_CUDA_SOURCE, CUDA_OPTIONS).get_function("stress_gpu")(
        ((total + threads - 1) // threads,), (threads,),
        (*args, np.int32(n_acc), np.int32(balance.shape[1]), np.int32(n_inst), np.int32(m.floor.shape[1]),
         np.int32(n_shocks), np.int32(n_second), np.int32(is_vol), ratio, value))
    totals += cp.stack([(ratio < 1).sum(axis=0).astype(cp.float64),
                        cp.where(value < 0, -value, 0.0).sum(axis=0)], axis=-1)
    worst[:] = ratio.min(axis=(1, 2))
    return worst
