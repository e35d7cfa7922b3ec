"""Portfolio contagion (SPEC section 5): liquidations that cross instruments, numba CPU.

One contagion is one (snapshot time, common shock s0). Every asset price moves by
``1 + beta s0``; each instrument with a book has its book prices moved by its underlying's
factor and its mark set to its book price, which starts at ``mid (1 + beta s0)`` (as the
single-instrument cascade treats the book price as the mark). Round after round:

1. every account part (a cross account; an isolated account's wallet and each isolated
   position) whose collateral value C is below its requirement R at the current prices
   (``liquidation.part_margin``, the one place of the account formulas) is liquidated: a
   cross account closes every position, an isolated part its own;
2. per instrument the round's forced sells (longs closed) and buys (shorts closed) meet:
   the smaller of the two trades at the price before the round, and the rest walks the
   book from its best remaining level (depth consumed is never replenished); the price
   becomes the deepest level that traded (the deepest level, when the book runs out:
   ``book_exhausted``); the matched part and the walk's volume-weighted price are what the
   orders got;
3. marks follow: a booked instrument's mark is its new price; an asset's price moves by the
   same factor as the book of its reference instrument (the perpetual on it with the most
   open interest), and instruments without a book (options; perpetuals of assets with no
   booked instrument) follow their underlying.

Until a round liquidates nothing. Outputs per instrument ``out[i, k, :]`` = (final price,
liquidated notional (|q| x fill price; |q| for inverse contracts, whose q is USD), accounts
with a position closed on it, rounds in which it traded, book exhausted 0/1); and
``shortfall[k]``: the bad debt of the liquidated parts, Sum max(0, -N) with N their balances
at full value (prices of the round they were liquidated in) plus their closed positions'
PnL at the prices the orders got (and an isolated part's margin).

Positions are evaluated account by account each round: an account's C and R depend on
every price, so there is no per-instrument sorted order as in the single-instrument
cascade; rounds are few (each must move some book by at least one level).
"""

from __future__ import annotations

import numpy as np

from ._compile import cpu_kernel, cuda_module, cupy_module
from .liquidation import CUDA_OPTIONS, CUDA_SOURCE, INVERSE, LINEAR, device_market, part_margin
from .pricing import black76_price

FIELDS = ("final_price", "liquidated_notional", "accounts_liquidated", "rounds", "book_exhausted")


@cpu_kernel
def _beyond_price(e, side, start, visible, last, step, exponent):
    """The depth model's price once ``e`` has traded beyond the visible side (size
    ``visible``, deepest level ``last``, moved mid ``start``): flat ``last + side e /
    visible step start``; power ``start + (last - start) ((visible + e) / visible)^(1 /
    gamma)`` (kernels/cascade.py, the same models). Not floored."""
    if exponent > 0.0:
        return start + (last - start) * ((visible + e) / visible) ** (1.0 / exponent)
    return last + side * e / visible * step * start


@cpu_kernel
def _beyond_cost(e, side, start, visible, last, step, exponent):
    """The integral of ``_beyond_price`` floored at 0 from 0 to ``e``: what the first ``e``
    traded beyond the visible side got in all."""
    if side < 0.0:  # sells: the price reaches 0 at e_zero and stays there
        if exponent > 0.0:
            e_zero = visible * ((start / (start - last)) ** exponent - 1.0) if start > last else np.inf
        else:
            e_zero = last * visible / (step * start)
        e = min(e, e_zero)
    if exponent > 0.0:
        a = 1.0 / exponent
        return start * e + (last - start) * visible / (a + 1.0) * (((visible + e) / visible) ** (a + 1.0) - 1.0)
    return last * e + side * step * start * e * e / (2.0 * visible)


@cpu_kernel
def _consume(levels, remaining, volume, scale, fallback, side, start, visible, last, step, exponent, beyond):
    """Walk one side from its best remaining level: consume ``volume`` (depth is never
    replenished). Returns (the volume-weighted value of what it got; the deepest value
    traded, ``fallback`` if none; whether the visible book ran out; the volume traded
    beyond it so far). A level's value is ``levels[j] * scale``. Beyond the visible levels
    the depth model (``step`` flat or ``exponent`` power, NaN: none) fills the rest, with
    ``beyond`` traded there before; without one, the rest gets the deepest value."""
    left = volume
    total = 0.0
    deepest = fallback
    for j in range(levels.size):
        if left <= 0.0:
            break
        size = remaining[j]
        if not (size > 0.0) or levels[j] != levels[j]:
            continue
        take = min(size, left)
        remaining[j] = size - take
        deepest = levels[j] * scale
        total += take * deepest
        left -= take
    gone = left > 0.0
    if gone and visible > 0.0 and (step > 0.0 or exponent > 0.0):
        after = beyond + left
        total += (_beyond_cost(after, side, start, visible, last, step, exponent)
                  - _beyond_cost(beyond, side, start, visible, last, step, exponent))
        deepest = max(_beyond_price(after, side, start, visible, last, step, exponent), 0.0)
        beyond = after
        left = 0.0
    return (total + left * deepest) / volume, deepest, gone, beyond


@cpu_kernel
def visible_sides(price, size, visible, last):
    """Per instrument row: the visible side's size (levels with a price and size > 0) and
    its deepest such level's price (NaN: none)."""
    for i in range(price.shape[0]):
        visible[i] = 0.0
        last[i] = np.nan
        for j in range(price.shape[1]):
            if size[i, j] > 0.0 and price[i, j] == price[i, j]:
                visible[i] += size[i, j]
                last[i] = price[i, j]


# An account whose C - R moves with one mark alone (a cross account holding one linear
# perpetual, its balances in assets whose price never moves: beta 0 and no book) is
# liquidated exactly when that mark passes a threshold, as in the single-instrument cascade:
# such accounts sit in per-instrument tables sorted by threshold, and each round walks a
# pointer instead of evaluating them. Decisions stay those of the direct evaluation: only
# thresholds farther than SURE (relative) from the mark are taken as decided; nearer ones
# are evaluated with ``part_margin`` like every other account.
SURE = 1e-8


@cpu_kernel
def _mark_threshold(k_const, q, entry_price, i, floor, mmr, amount):
    """The mark m at which ``k_const + q (m - e) - MM(|q| m) = 0`` (C = R of a cross account
    holding q of linear instrument i, its balances worth k_const at full value less
    haircuts); NaN where no bracket holds the root. Longs are liquidated below it, shorts
    above it (C - R is monotone in m for mmr < 1 and a continuous MM)."""
    n_brackets = floor.shape[1]
    for b in range(n_brackets):
        f = floor[i, b]
        if f != f:
            break
        root = (q * entry_price - k_const - amount[i, b]) / (q - abs(q) * mmr[i, b])
        notional = abs(q) * root
        upper = floor[i, b + 1] if b + 1 < n_brackets else np.inf
        if notional >= f and not (notional >= upper):
            return root
    return np.nan


@cpu_kernel
def _continuous_brackets(floor, mmr, amount, ok):
    """Per instrument: MM continuous at every bracket floor (to 1e-9 relative) and mmr < 1,
    the conditions under which a single position's C - R is monotone in its mark."""
    for i in range(floor.shape[0]):
        ok[i] = True
        for b in range(floor.shape[1]):
            f = floor[i, b]
            if f != f:
                break
            if not mmr[i, b] < 1.0:
                ok[i] = False
            if b > 0:
                below = f * mmr[i, b - 1] - amount[i, b - 1]
                above = f * mmr[i, b] - amount[i, b]
                if abs(above - below) > 1e-9 * max(abs(above), abs(below), 1.0):
                    ok[i] = False


@cpu_kernel
def mark_tables(balance, position, entry, isolated, reference, m, general, table_account, table_threshold,
                table_start):
    """Split the accounts: those whose C - R follows one mark (see SURE) go into tables
    sorted by threshold, per instrument and side (group 2 i: longs, threshold descending;
    2 i + 1: shorts, ascending; ``table_start`` (2 I + 1) the offsets); the others are
    listed in ``general``. Returns the number of general accounts."""
    n_acc, n_inst = position.shape
    n_assets = balance.shape[1]
    ok = np.empty(n_inst, dtype=np.bool_)
    _continuous_brackets(m.floor, m.mmr, m.amount, ok)
    constant = np.empty(n_assets, dtype=np.bool_)
    for s in range(n_assets):
        constant[s] = m.beta[s] == 0.0 and reference[s] < 0
    group = np.full(n_acc, -1, dtype=np.int64)
    key = np.zeros(n_acc)
    threshold = np.zeros(n_acc)
    n_general = 0
    for a in range(n_acc):
        held = -1
        count = 0
        for i in range(n_inst):
            if position[a, i] != 0.0:
                held = i
                count += 1
        simple = not isolated[a] and count == 1 and m.kind[held] == LINEAR and ok[held]
        k_const = 0.0
        if simple:
            for s in range(n_assets):
                b = balance[a, s]
                if b != 0.0:
                    if not constant[s]:
                        simple = False
                        break
                    k_const += b * m.price[s] * (1.0 - m.haircut[s]) if b > 0.0 else b * m.price[s]
        if simple:
            q = position[a, held]
            t = _mark_threshold(k_const, q, entry[a, held], held, m.floor, m.mmr, m.amount)
            if t == t:
                group[a] = 2 * held + (0 if q > 0.0 else 1)
                threshold[a] = t
                key[a] = -t if q > 0.0 else t
                continue
        general[n_general] = a
        n_general += 1
    order = np.argsort(key, kind="mergesort")
    counts = np.zeros(2 * n_inst + 1, dtype=np.int64)
    for a in range(n_acc):
        if group[a] >= 0:
            counts[group[a] + 1] += 1
    for g in range(2 * n_inst):
        table_start[g + 1] = table_start[g] + counts[g + 1]
    table_start[0] = 0
    fill = table_start[:-1].copy()
    for j in range(n_acc):
        a = order[j]
        g = group[a]
        if g >= 0:
            table_account[fill[g]] = a
            table_threshold[fill[g]] = threshold[a]
            fill[g] += 1
    return n_general


@cpu_kernel
def contagion_cpu(bid_price, bid_size, ask_price, ask_size, mid, booked, reference, depth_step, depth_exponent,
                  shocks, balance, position, entry, iso_margin, isolated, m, out, shortfall):
    """numba: every shock of one snapshot time. Books (I, L) (rows of instruments without a
    book are ignored: ``booked`` False); mid (I,); reference (S,) the booked instrument an
    asset's price follows (-1: none); depth_step, depth_exponent (I,) the depth model beyond
    the visible levels (flat step or power gamma; NaN: none); shocks (K,); accounts as for
    ``liquidation_cpu``; out (I, K, 5) and shortfall (K,) are written."""
    n_acc, n_inst = position.shape
    n_assets = balance.shape[1]
    beta, kind, underlying, mark = m.beta, m.kind, m.underlying, m.mark
    visible_bid = np.empty(n_inst)
    last_bid = np.empty(n_inst)
    visible_ask = np.empty(n_inst)
    last_ask = np.empty(n_inst)
    visible_sides(bid_price, bid_size, visible_bid, last_bid)
    visible_sides(ask_price, ask_size, visible_ask, last_ask)
    general = np.empty(n_acc, dtype=np.int64)
    table_account = np.empty(n_acc, dtype=np.int64)
    table_threshold = np.empty(n_acc)
    table_start = np.zeros(2 * n_inst + 1, dtype=np.int64)
    n_general = mark_tables(balance, position, entry, isolated, reference, m, general, table_account,
                            table_threshold, table_start)
    table_member = np.ones(n_acc, dtype=np.bool_)
    for x in range(n_general):
        table_member[general[x]] = False
    for k in range(shocks.size):
        s0 = shocks[k]
        asset_w = np.empty(n_assets)
        for s in range(n_assets):
            asset_w[s] = beta[s] * s0
        factor = np.empty(n_inst)  # each book's price move
        price = np.empty(n_inst)
        mark_w = np.empty(n_inst)
        for i in range(n_inst):
            factor[i] = 1.0 + beta[underlying[i]] * s0
            price[i] = mid[i] * factor[i] if booked[i] else np.nan
            mark_w[i] = price[i] / mark[i] - 1.0 if booked[i] else asset_w[underlying[i]]
        bids = bid_size.copy()
        asks = ask_size.copy()
        beyond_bid = np.zeros(n_inst)  # traded beyond each visible side so far
        beyond_ask = np.zeros(n_inst)
        alive = np.ones(n_acc, dtype=np.bool_)  # cross account, or an isolated account's wallet
        open_pos = position != 0.0
        closed_by = np.zeros((n_acc, n_inst), dtype=np.int8)  # 1: closed in the round being settled
        wallet_value = np.zeros(n_acc)  # balances at full value, the prices of the round liquidated
        liquidated_wallet = np.zeros(n_acc, dtype=np.bool_)
        closed = np.empty(n_acc, dtype=np.int64)  # the accounts with something closed this round
        pointer = table_start[:-1].copy()  # per table: thresholds before it are liquidated
        lowest = np.full(n_inst, np.inf)  # the lowest and highest marks so far
        highest = np.full(n_inst, -np.inf)
        notional = np.zeros(n_inst)
        accounts = np.zeros(n_inst)
        rounds = np.zeros(n_inst)
        exhausted = np.zeros(n_inst)
        sells = np.empty(n_inst)
        buys = np.empty(n_inst)
        fill_sell = np.empty(n_inst)
        fill_buy = np.empty(n_inst)
        bad_debt = 0.0
        while True:
            sells[:] = 0.0
            buys[:] = 0.0
            n_closed = 0
            for x in range(n_general):
                a = general[x]
                touched = False
                # the cross account, or an isolated account's wallet (part -1 is either)
                if alive[a]:
                    c, r = part_margin(a, -1, 1.0, 0.0, asset_w, mark_w, balance, position, entry, iso_margin,
                                       isolated, m)
                    if c < r:
                        alive[a] = False
                        liquidated_wallet[a] = True
                        touched = True
                        if not isolated[a]:  # a cross account closes every position
                            for i in range(n_inst):
                                if open_pos[a, i]:
                                    open_pos[a, i] = False
                                    closed_by[a, i] = 1
                if isolated[a]:  # each isolated position alone
                    for i in range(n_inst):
                        if not open_pos[a, i]:
                            continue
                        c, r = part_margin(a, i, 1.0, 0.0, asset_w, mark_w, balance, position, entry, iso_margin,
                                           isolated, m)
                        if c < r:
                            open_pos[a, i] = False
                            closed_by[a, i] = 1
                            touched = True
                if touched:
                    closed[n_closed] = a
                    n_closed += 1
            # the accounts that follow one mark: the tables' pointers, and an evaluation
            # only for thresholds within SURE of the mark
            for i in range(n_inst):
                now = mark[i] * (1.0 + mark_w[i])
                lowest[i] = min(lowest[i], now)
                highest[i] = max(highest[i], now)
                for side in range(2):
                    g = 2 * i + side
                    j = pointer[g]
                    end = table_start[g + 1]
                    while j < end and (table_threshold[j] > lowest[i] * (1.0 + SURE) if side == 0
                                       else table_threshold[j] < highest[i] * (1.0 - SURE)):
                        a = table_account[j]
                        if alive[a]:
                            alive[a] = False
                            closed[n_closed] = a
                            n_closed += 1
                        j += 1
                    pointer[g] = j
                    while j < end and (table_threshold[j] > now * (1.0 - SURE) if side == 0
                                       else table_threshold[j] < now * (1.0 + SURE)):
                        a = table_account[j]
                        if alive[a]:
                            c, r = part_margin(a, -1, 1.0, 0.0, asset_w, mark_w, balance, position, entry,
                                               iso_margin, isolated, m)
                            if c < r:
                                alive[a] = False
                                closed[n_closed] = a
                                n_closed += 1
                        j += 1
            if n_closed == 0:
                break
            order = np.sort(closed[:n_closed])  # settled in account order, as a plain loop would
            for x in range(n_closed):
                a = order[x]
                if table_member[a]:  # liquidated from a table: the whole account, its one position
                    liquidated_wallet[a] = True
                    for i in range(n_inst):
                        if open_pos[a, i]:
                            open_pos[a, i] = False
                            closed_by[a, i] = 1
                if liquidated_wallet[a]:
                    value = 0.0
                    for s in range(n_assets):
                        value += balance[a, s] * m.price[s] * (1.0 + asset_w[s])
                    wallet_value[a] = value
                for i in range(n_inst):
                    if closed_by[a, i]:
                        q = position[a, i]
                        if q > 0.0:
                            sells[i] += q
                        else:
                            buys[i] -= q
            # the books: what meets trades at the price before the round, the rest walks
            for i in range(n_inst):
                fill_sell[i] = np.nan
                fill_buy[i] = np.nan
                if sells[i] == 0.0 and buys[i] == 0.0:
                    continue
                rounds[i] += 1.0
                before = price[i] if booked[i] else mark[i] * (1.0 + mark_w[i])
                if not booked[i]:
                    fill_sell[i] = before
                    fill_buy[i] = before
                    continue
                matched = min(sells[i], buys[i])
                net = sells[i] - buys[i]
                start = mid[i] * factor[i]
                if net > 0.0:
                    vwap, new, gone, beyond_bid[i] = _consume(
                        bid_price[i], bids[i], net, factor[i], before, -1.0, start, visible_bid[i],
                        last_bid[i] * factor[i], depth_step[i], depth_exponent[i], beyond_bid[i])
                    fill_sell[i] = (matched * before + net * vwap) / sells[i]
                    fill_buy[i] = before
                elif net < 0.0:
                    vwap, new, gone, beyond_ask[i] = _consume(
                        ask_price[i], asks[i], -net, factor[i], before, 1.0, start, visible_ask[i],
                        last_ask[i] * factor[i], depth_step[i], depth_exponent[i], beyond_ask[i])
                    fill_buy[i] = (matched * before - net * vwap) / buys[i]
                    fill_sell[i] = before
                else:
                    new, gone = before, False
                    fill_sell[i] = before
                    fill_buy[i] = before
                if gone:
                    exhausted[i] = 1.0
                price[i] = new
            # what each closed position got; the bad debt of the parts liquidated
            for x in range(n_closed):
                a = order[x]
                part_value = wallet_value[a]
                counted = liquidated_wallet[a] and not isolated[a]
                for i in range(n_inst):
                    if not closed_by[a, i]:
                        continue
                    q = position[a, i]
                    fill = fill_sell[i] if q > 0.0 else fill_buy[i]
                    u = underlying[i]
                    coin = m.price[u] * (1.0 + asset_w[u])
                    if kind[i] == LINEAR:
                        pnl = q * (fill - entry[a, i])
                        notional[i] += abs(q) * fill
                    elif kind[i] == INVERSE:
                        pnl = q * (1.0 / entry[a, i] - 1.0 / fill) * coin
                        notional[i] += abs(q)
                    else:  # an option closes at its model value on the moved underlying
                        value = black76_price(coin, m.strike[i], m.years[i], m.vol[i], m.is_call[i], 0.0)
                        pnl = q * value
                        notional[i] += abs(q) * value
                    accounts[i] += 1.0
                    if isolated[a]:
                        margin_unit = coin if kind[i] == INVERSE else 1.0
                        value = iso_margin[a, i] * margin_unit + pnl
                        if value < 0.0:
                            bad_debt -= value
                    else:
                        part_value += pnl
                        counted = True
                    closed_by[a, i] = 0
                if counted or (isolated[a] and liquidated_wallet[a]):
                    if part_value < 0.0:
                        bad_debt -= part_value
                wallet_value[a] = 0.0
                liquidated_wallet[a] = False
            # marks and asset prices follow the books
            for i in range(n_inst):
                if booked[i]:
                    mark_w[i] = price[i] / mark[i] - 1.0
            for s in range(n_assets):
                ref = reference[s]
                if ref >= 0:  # the asset moves as its reference book has since the unshocked mid
                    asset_w[s] = price[ref] / mid[ref] - 1.0
            for i in range(n_inst):
                if not booked[i]:
                    mark_w[i] = asset_w[underlying[i]]
        for i in range(n_inst):
            out[i, k, 0] = price[i] if booked[i] else mark[i] * (1.0 + mark_w[i])
            out[i, k, 1] = notional[i]
            out[i, k, 2] = accounts[i]
            out[i, k, 3] = rounds[i]
            out[i, k, 4] = exhausted[i]
        shortfall[k] = bad_debt
    return out



# ----------------------------------------------------------------------------- CUDA
# The same rounds on the device. A contagion's rounds are sequential, so the parallelism is
# within a round: one launch per step, each thread independent (one per shock x account, or
# per shock x instrument), the host looping until every shock's round liquidates nothing.
# Every sum runs in the CPU kernel's order (accounts ascending, then instruments), so the
# two agree to the bit wherever the account model does (liquidation's CUDA ``part_margin``).
# Account state per shock x account x instrument: 1 open, 2 closed in this round, 0 not
# open (closed before, or never held).

CONTAGION_CUDA_SOURCE = r"""
__device__ double beyond_price(double e, double side, double start, double visible, double last, double step,
                               double exponent) {
    if (exponent > 0.0) return start + (last - start) * pow((visible + e) / visible, 1.0 / exponent);
    return last + side * e / visible * step * start;
}

__device__ double beyond_cost(double e, double side, double start, double visible, double last, double step,
                              double exponent) {
    if (side < 0.0) {
        double e_zero;
        if (exponent > 0.0)
            e_zero = start > last ? visible * (pow(start / (start - last), exponent) - 1.0) : CUDART_INF;
        else e_zero = last * visible / (step * start);
        e = fmin(e, e_zero);
    }
    if (exponent > 0.0) {
        double a = 1.0 / exponent;
        return start * e + (last - start) * visible / (a + 1.0) * (pow((visible + e) / visible, a + 1.0) - 1.0);
    }
    return last * e + side * step * start * e * e / (2.0 * visible);
}

__device__ void consume(const double* levels, double* remaining, int n_levels, double volume, double scale,
                        double fallback, double side, double start, double visible, double last, double step,
                        double exponent, double* beyond, double* vwap, double* deepest_out, bool* gone) {
    double left = volume, total = 0.0, deepest = fallback;
    for (int j = 0; j < n_levels; ++j) {  // _consume in kernels/contagion.py
        if (left <= 0.0) break;
        double size = remaining[j];
        if (!(size > 0.0) || levels[j] != levels[j]) continue;
        double take = fmin(size, left);
        remaining[j] = size - take;
        deepest = levels[j] * scale;
        total += take * deepest;
        left -= take;
    }
    *gone = left > 0.0;
    if (left > 0.0 && visible > 0.0 && (step > 0.0 || exponent > 0.0)) {
        double after = *beyond + left;
        total += beyond_cost(after, side, start, visible, last, step, exponent)
                 - beyond_cost(*beyond, side, start, visible, last, step, exponent);
        deepest = fmax(beyond_price(after, side, start, visible, last, step, exponent), 0.0);
        *beyond = after;
        left = 0.0;
    }
    *vwap = (total + left * deepest) / volume;
    *deepest_out = deepest;
}

// one thread per shock: the shocked prices, the books' remaining depth, the counters
extern "C" __global__ void contagion_start(
    const double* bid_size, const double* ask_size, const double* mid, const bool* booked,
    const double* shocks, const double* beta, const long long* underlying, const double* mark,
    int n_shocks, int n_assets, int n_inst, int levels,
    double* price, double* asset_w, double* mark_w, double* bids, double* asks, double* beyond_bid,
    double* beyond_ask, double* out, double* shortfall, int* active, int* any_closed)
{
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n_shocks) return;
    double s0 = shocks[k];
    for (int s = 0; s < n_assets; ++s) asset_w[k * n_assets + s] = beta[s] * s0;
    for (int i = 0; i < n_inst; ++i) {
        double factor = 1.0 + beta[underlying[i]] * s0;
        double p = booked[i] ? mid[i] * factor : CUDART_NAN;
        price[k * n_inst + i] = p;
        mark_w[k * n_inst + i] = booked[i] ? p / mark[i] - 1.0 : asset_w[k * n_assets + underlying[i]];
        beyond_bid[k * n_inst + i] = 0.0;
        beyond_ask[k * n_inst + i] = 0.0;
        for (int j = 0; j < levels; ++j) {
            bids[(k * n_inst + i) * levels + j] = bid_size[i * levels + j];
            asks[(k * n_inst + i) * levels + j] = ask_size[i * levels + j];
        }
        for (int f = 1; f < 5; ++f) out[(i * n_shocks + k) * 5 + f] = 0.0;
    }
    shortfall[k] = 0.0;
    active[k] = 1;
    any_closed[k] = 0;
}

// one thread per shock x account: every position open
extern "C" __global__ void contagion_open(
    const double* position, int n_shocks, int n_acc, int n_inst, unsigned char* alive, unsigned char* state)
{
    long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (long long)n_shocks * n_acc) return;
    long long a = x % n_acc;
    alive[x] = 1;
    for (int i = 0; i < n_inst; ++i) state[x * n_inst + i] = position[a * n_inst + i] != 0.0 ? 1 : 0;
}

// one thread per shock x account: step 1, which parts are liquidated at this round's prices
extern "C" __global__ void contagion_evaluate(
    const double* balance, const double* position, const double* entry, const double* iso_margin,
    const bool* isolated, const double* price, const double* haircut, const double* beta,
    const long long* kind, const long long* underlying, const double* mark, const double* strike,
    const double* years, const double* vol, const bool* is_call, const double* floor,
    const double* mmr, const double* amount, int n_acc, int n_assets, int n_inst, int n_brackets,
    int n_shocks, const double* asset_w_all, const double* mark_w_all, const int* active,
    unsigned char* alive, unsigned char* state, double* wallet_value, unsigned char* wallet_gone,
    int* any_closed)
{
    long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (long long)n_shocks * n_acc) return;
    long long k = x / n_acc, a = x % n_acc;
    if (!active[k]) return;
    Model m = {balance, position, entry, iso_margin, isolated, price, haircut, beta, kind, underlying,
               mark, strike, years, vol, is_call, floor, mmr, amount, n_assets, n_inst, n_brackets};
    const double* asset_w = asset_w_all + k * n_assets;
    const double* mark_w = mark_w_all + k * n_inst;
    unsigned char* st = state + x * n_inst;
    bool closed = false, gone = false;
    double c, r;
    if (alive[x]) {  // the cross account, or an isolated account's wallet
        part_margin(m, a, -1, 1.0, 0.0, asset_w, mark_w, &c, &r);
        if (c < r) {
            alive[x] = 0;
            gone = closed = true;
            if (!isolated[a]) for (int i = 0; i < n_inst; ++i) if (st[i] == 1) st[i] = 2;
        }
    }
    if (isolated[a]) {
        for (int i = 0; i < n_inst; ++i) {
            if (st[i] != 1) continue;
            part_margin(m, a, i, 1.0, 0.0, asset_w, mark_w, &c, &r);
            if (c < r) { st[i] = 2; closed = true; }
        }
    }
    double value = 0.0;
    if (gone) for (int s = 0; s < n_assets; ++s) value += balance[a * n_assets + s] * price[s] * (1.0 + asset_w[s]);
    wallet_value[x] = value;
    wallet_gone[x] = gone ? 1 : 0;
    if (closed) any_closed[k] = 1;
}

// one thread per shock x instrument: step 2, the round's forced flows through the book
extern "C" __global__ void contagion_books(
    const double* bid_price, const double* ask_price, const bool* booked, const double* position,
    const double* beta, const long long* underlying, const double* mark, const double* shocks,
    const double* mid, const double* depth_step, const double* depth_exponent, const double* visible_bid,
    const double* last_bid, const double* visible_ask, const double* last_ask,
    int n_shocks, int n_acc, int n_inst, int levels, const int* active, const int* any_closed,
    const unsigned char* state, const double* mark_w, double* price, double* bids, double* asks,
    double* beyond_bid, double* beyond_ask, double* fill_sell, double* fill_buy, double* out)
{
    long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (long long)n_shocks * n_inst) return;
    long long k = x / n_inst;
    int i = (int)(x % n_inst);
    if (!active[k] || !any_closed[k]) return;
    double sells = 0.0, buys = 0.0;
    for (long long a = 0; a < n_acc; ++a) {
        if (state[(k * n_acc + a) * n_inst + i] != 2) continue;
        double q = position[a * n_inst + i];
        if (q > 0.0) sells += q; else buys -= q;
    }
    fill_sell[x] = CUDART_NAN;
    fill_buy[x] = CUDART_NAN;
    if (sells == 0.0 && buys == 0.0) return;
    double* row = out + (i * n_shocks + k) * 5;
    row[3] += 1.0;
    double before = booked[i] ? price[x] : mark[i] * (1.0 + mark_w[x]);
    if (!booked[i]) { fill_sell[x] = before; fill_buy[x] = before; return; }
    double factor = 1.0 + beta[underlying[i]] * shocks[k];
    double matched = fmin(sells, buys), net = sells - buys, vwap, fresh = before;
    bool gone = false;
    double start = mid[i] * factor;
    if (net > 0.0) {
        consume(bid_price + i * levels, bids + x * levels, levels, net, factor, before, -1.0, start, visible_bid[i],
                last_bid[i] * factor, depth_step[i], depth_exponent[i], beyond_bid + x, &vwap, &fresh, &gone);
        fill_sell[x] = (matched * before + net * vwap) / sells;
        fill_buy[x] = before;
    } else if (net < 0.0) {
        consume(ask_price + i * levels, asks + x * levels, levels, -net, factor, before, 1.0, start, visible_ask[i],
                last_ask[i] * factor, depth_step[i], depth_exponent[i], beyond_ask + x, &vwap, &fresh, &gone);
        fill_buy[x] = (matched * before - net * vwap) / buys;
        fill_sell[x] = before;
    } else {
        fill_sell[x] = before;
        fill_buy[x] = before;
    }
    if (gone) row[4] = 1.0;
    price[x] = fresh;
}

__device__ double closed_value(const Model& m, int i, double q, double entry, double fill, double coin,
                               double* notional) {
    if (m.kind[i] == LINEAR) { *notional = fabs(q) * fill; return q * (fill - entry); }
    if (m.kind[i] == INVERSE) { *notional = fabs(q); return q * (1.0 / entry - 1.0 / fill) * coin; }
    double value = black76(coin, m.strike[i], m.years[i], m.vol[i], m.is_call[i]);
    *notional = fabs(q) * value;
    return q * value;
}

// one thread per shock x instrument: step 3a, notional and accounts of the positions closed
extern "C" __global__ void contagion_positions(
    const double* balance, const double* position, const double* entry, const double* iso_margin,
    const bool* isolated, const double* price, const double* haircut, const double* beta,
    const long long* kind, const long long* underlying, const double* mark, const double* strike,
    const double* years, const double* vol, const bool* is_call, const double* floor,
    const double* mmr, const double* amount, int n_acc, int n_assets, int n_inst, int n_brackets,
    int n_shocks, const int* active, const int* any_closed, const unsigned char* state,
    const double* asset_w, const double* fill_sell, const double* fill_buy, double* out)
{
    long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (long long)n_shocks * n_inst) return;
    long long k = x / n_inst;
    int i = (int)(x % n_inst);
    if (!active[k] || !any_closed[k]) return;
    Model m = {balance, position, entry, iso_margin, isolated, price, haircut, beta, kind, underlying,
               mark, strike, years, vol, is_call, floor, mmr, amount, n_assets, n_inst, n_brackets};
    int u = (int)underlying[i];
    double coin = price[u] * (1.0 + asset_w[k * n_assets + u]);
    double* row = out + (i * n_shocks + k) * 5;
    for (long long a = 0; a < n_acc; ++a) {
        if (state[(k * n_acc + a) * n_inst + i] != 2) continue;
        double q = position[a * n_inst + i], notional;
        closed_value(m, i, q, entry[a * n_inst + i], q > 0.0 ? fill_sell[x] : fill_buy[x], coin, &notional);
        row[1] += notional;
        row[2] += 1.0;
    }
}

// one thread per shock x account: step 3b, the bad debt of its parts liquidated this round
// (debt: n_inst + 1 slots per account, the isolated positions then the wallet or cross
// account, each the amount below zero), and its positions closed for good
extern "C" __global__ void contagion_debts(
    const double* balance, const double* position, const double* entry, const double* iso_margin,
    const bool* isolated, const double* price, const double* haircut, const double* beta,
    const long long* kind, const long long* underlying, const double* mark, const double* strike,
    const double* years, const double* vol, const bool* is_call, const double* floor,
    const double* mmr, const double* amount, int n_acc, int n_assets, int n_inst, int n_brackets,
    int n_shocks, const int* active, const int* any_closed, unsigned char* state,
    const double* wallet_value, const unsigned char* wallet_gone, const double* asset_w,
    const double* fill_sell, const double* fill_buy, double* debt)
{
    long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (long long)n_shocks * n_acc) return;
    long long k = x / n_acc, a = x % n_acc;
    if (!active[k] || !any_closed[k]) return;
    Model m = {balance, position, entry, iso_margin, isolated, price, haircut, beta, kind, underlying,
               mark, strike, years, vol, is_call, floor, mmr, amount, n_assets, n_inst, n_brackets};
    double* mine = debt + x * (n_inst + 1);
    unsigned char* st = state + x * n_inst;
    double part_value = wallet_value[x];
    bool counted = wallet_gone[x] && !isolated[a];
    for (int i = 0; i < n_inst; ++i) {
        mine[i] = 0.0;
        if (st[i] != 2) continue;
        double q = position[a * n_inst + i], notional;
        int u = (int)underlying[i];
        double coin = price[u] * (1.0 + asset_w[k * n_assets + u]);
        long long cell = k * n_inst + i;
        double pnl = closed_value(m, i, q, entry[a * n_inst + i], q > 0.0 ? fill_sell[cell] : fill_buy[cell],
                                  coin, &notional);
        if (isolated[a]) {
            double value = iso_margin[a * n_inst + i] * (kind[i] == INVERSE ? coin : 1.0) + pnl;
            if (value < 0.0) mine[i] = -value;
        } else {
            part_value += pnl;
            counted = true;
        }
        st[i] = 0;
    }
    mine[n_inst] = (counted || (isolated[a] && wallet_gone[x])) && part_value < 0.0 ? -part_value : 0.0;
}

// one thread per shock: step 4, the bad debt added in account order, then marks and asset
// prices follow the books; a shock whose round liquidated nothing is done
extern "C" __global__ void contagion_follow(
    const double* mid, const bool* booked, const long long* reference, const long long* underlying,
    const double* mark, int n_shocks, int n_acc, int n_assets, int n_inst, const double* debt,
    const double* price, double* asset_w, double* mark_w, double* shortfall, int* active, int* any_closed)
{
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n_shocks || !active[k]) return;
    if (!any_closed[k]) { active[k] = 0; return; }
    any_closed[k] = 0;
    double total = shortfall[k];
    const double* d = debt + k * n_acc * (n_inst + 1);
    for (long long j = 0; j < (long long)n_acc * (n_inst + 1); ++j) total += d[j];
    shortfall[k] = total;
    for (int i = 0; i < n_inst; ++i) if (booked[i]) mark_w[k * n_inst + i] = price[k * n_inst + i] / mark[i] - 1.0;
    for (int s = 0; s < n_assets; ++s) {
        long long ref = reference[s];
        if (ref >= 0) asset_w[k * n_assets + s] = price[k * n_inst + ref] / mid[ref] - 1.0;
    }
    for (int i = 0; i < n_inst; ++i) if (!booked[i]) mark_w[k * n_inst + i] = asset_w[k * n_assets + underlying[i]];
}

// one thread per shock x instrument: the final prices
extern "C" __global__ void contagion_finish(
    const bool* booked, const double* mark, int n_shocks, int n_inst, const double* price,
    const double* mark_w, double* out)
{
    long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (long long)n_shocks * n_inst) return;
    long long k = x / n_inst;
    int i = (int)(x % n_inst);
    out[(i * n_shocks + k) * 5] = booked[i] ? price[x] : mark[i] * (1.0 + mark_w[x]);
}
"""


def contagion_gpu(bid_price, bid_size, ask_price, ask_size, mid, booked, reference, depth_step, depth_exponent,
                  shocks, balance, position, entry, iso_margin, isolated, m, out, shortfall):
    """CuPy: ``contagion_cpu``'s contract on the device (inputs anywhere, copied over;
    ``out`` (I, K, 5) and ``shortfall`` (K,) CuPy arrays). Each round is a few launches
    over shocks x accounts and shocks x instruments; the host loops until every shock's
    round liquidates nothing (a flag per shock read back each round)."""
    cp = cupy_module()
    n_acc, n_inst = position.shape
    n_assets = balance.shape[1]
    n_shocks = int(np.size(shocks))
    levels = bid_price.shape[1]
    f64 = lambda x: cp.ascontiguousarray(cp.asarray(x, dtype=cp.float64))  # noqa: E731
    flags = lambda x: cp.ascontiguousarray(cp.asarray(x, dtype=cp.bool_).ravel())  # noqa: E731
    dm = device_market(cp, m)
    bid_p, bid_s, ask_p, ask_s, mid_d, shocks_d = (f64(a) for a in (bid_price, bid_size, ask_price, ask_size,
                                                                     mid, shocks))
    booked_d, isolated_d = flags(booked), flags(isolated)
    host = lambda x: np.ascontiguousarray(x.get() if hasattr(x, "get") else x, dtype=np.float64)  # noqa: E731
    sides = []
    for prices, sizes in ((bid_price, bid_size), (ask_price, ask_size)):
        visible, last = np.empty(n_inst), np.empty(n_inst)
        visible_sides(host(prices), host(sizes), visible, last)
        sides += [f64(visible), f64(last)]
    step_d, exponent_d = f64(depth_step), f64(depth_exponent)
    reference_d = cp.ascontiguousarray(cp.asarray(reference, dtype=cp.int64))
    accounts = [f64(balance), f64(position), f64(entry), f64(iso_margin), isolated_d]
    model = (*accounts, *dm, np.int32(n_acc), np.int32(n_assets), np.int32(n_inst), np.int32(m.floor.shape[1]))
    price = cp.empty((n_shocks, n_inst))
    asset_w = cp.empty((n_shocks, n_assets))
    mark_w = cp.empty((n_shocks, n_inst))
    bids = cp.empty((n_shocks, n_inst, levels))
    asks = cp.empty((n_shocks, n_inst, levels))
    fill_sell = cp.empty((n_shocks, n_inst))
    beyond_bid = cp.empty((n_shocks, n_inst))
    beyond_ask = cp.empty((n_shocks, n_inst))
    fill_buy = cp.empty((n_shocks, n_inst))
    active = cp.zeros(n_shocks, dtype=cp.int32)
    any_closed = cp.zeros(n_shocks, dtype=cp.int32)
    alive = cp.empty((n_shocks, n_acc), dtype=cp.uint8)
    state = cp.empty((n_shocks, n_acc, n_inst), dtype=cp.uint8)
    wallet_value = cp.empty((n_shocks, n_acc))
    wallet_gone = cp.empty((n_shocks, n_acc), dtype=cp.uint8)
    debt = cp.zeros((n_shocks, n_acc, n_inst + 1))
    module = cuda_module(CUDA_SOURCE + CONTAGION_CUDA_SOURCE, CUDA_OPTIONS)
    threads = 128

    def launch(name, count, args):
        module.get_function(name)(((count + threads - 1) // threads,), (threads,), args)

    sizes = (np.int32(n_shocks), np.int32(n_acc), np.int32(n_assets), np.int32(n_inst))
    launch("contagion_start", n_shocks, (bid_s, ask_s, mid_d, booked_d, shocks_d, dm.beta, dm.underlying, dm.mark,
                                         np.int32(n_shocks), np.int32(n_assets), np.int32(n_inst), np.int32(levels),
                                         price, asset_w, mark_w, bids, asks, beyond_bid, beyond_ask, out, shortfall,
                                         active, any_closed))
    launch("contagion_open", n_shocks * n_acc, (accounts[1], np.int32(n_shocks), np.int32(n_acc), np.int32(n_inst),
                                                alive, state))
    while bool(active.any()):
        launch("contagion_evaluate", n_shocks * n_acc, (*model, np.int32(n_shocks), asset_w, mark_w, active, alive,
                                                        state, wallet_value, wallet_gone, any_closed))
        launch("contagion_books", n_shocks * n_inst, (bid_p, ask_p, booked_d, accounts[1], dm.beta, dm.underlying,
                                                      dm.mark, shocks_d, mid_d, step_d, exponent_d, *sides,
                                                      np.int32(n_shocks), np.int32(n_acc), np.int32(n_inst),
                                                      np.int32(levels), active, any_closed, state, mark_w, price,
                                                      bids, asks, beyond_bid, beyond_ask, fill_sell, fill_buy, out))
        launch("contagion_positions", n_shocks * n_inst, (*model, np.int32(n_shocks), active, any_closed, state,
                                                          asset_w, fill_sell, fill_buy, out))
        launch("contagion_debts", n_shocks * n_acc, (*model, np.int32(n_shocks), active, any_closed, state,
                                                     wallet_value, wallet_gone, asset_w, fill_sell, fill_buy, debt))
        launch("contagion_follow", n_shocks, (mid_d, booked_d, reference_d, dm.underlying, dm.mark, *sizes, debt,
                                              price, asset_w, mark_w, shortfall, active, any_closed))
    launch("contagion_finish", n_shocks * n_inst, (booked_d, dm.mark, np.int32(n_shocks), np.int32(n_inst), price,
                                                   mark_w, out))
    return out


@cpu_kernel
def liquidity_shortfall_cpu(balance, position, entry, iso_margin, isolated, exclude, m, price_shocks, bid_ratio,
                            bid_size, ask_ratio, ask_size, booked, out):
    """The bad debt of the accounts liquidated under each price shock (one column of the
    second axis: ``m`` carries its haircuts and vols), their positions closed at the prices
    the books give (SPEC section 3, ``liquidity_shortfall``): per instrument the forced
    sells and buys meet at the scenario's mark and the rest walks the book; a level's
    price relative to the best level, times the mark, is what it pays, so that depth
    without limit at the best level gives the mark (and ``shortfall``) back. ``*_ratio``:
    level price / best level price (I, L); instruments without a book close at the mark
    (options at their model value). An account is liquidated when any of its parts is."""
    n_acc, n_inst = position.shape
    n_assets = balance.shape[1]
    beta, kind, underlying, mark = m.beta, m.kind, m.underlying, m.mark
    asset_w = np.empty(n_assets)
    mark_w = np.empty(n_inst)
    liquidated = np.zeros(n_acc, dtype=np.bool_)
    sells = np.empty(n_inst)
    buys = np.empty(n_inst)
    fill_sell = np.empty(n_inst)
    fill_buy = np.empty(n_inst)
    for j in range(price_shocks.size):
        s0 = price_shocks[j]
        for s in range(n_assets):
            asset_w[s] = beta[s] * s0
        for i in range(n_inst):
            mark_w[i] = beta[underlying[i]] * s0
        sells[:] = 0.0
        buys[:] = 0.0
        for a in range(n_acc):
            liquidated[a] = False
            if exclude[a]:
                continue
            c, r = part_margin(a, -1, 1.0, 0.0, asset_w, mark_w, balance, position, entry, iso_margin, isolated, m)
            gone = c < r
            if isolated[a]:
                for i in range(n_inst):
                    if position[a, i] != 0.0 and not gone:
                        c, r = part_margin(a, i, 1.0, 0.0, asset_w, mark_w, balance, position, entry, iso_margin,
                                           isolated, m)
                        gone = c < r
            if not gone:
                continue
            liquidated[a] = True
            for i in range(n_inst):
                q = position[a, i]
                if q > 0.0:
                    sells[i] += q
                elif q < 0.0:
                    buys[i] -= q
        for i in range(n_inst):
            fill_sell[i] = 1.0
            fill_buy[i] = 1.0
            if not booked[i]:
                continue
            matched = min(sells[i], buys[i])
            net = sells[i] - buys[i]
            if net > 0.0:
                walked = _consume(bid_ratio[i], bid_size[i].copy(), net, 1.0, 1.0, -1.0, 1.0, 0.0, np.nan, np.nan,
                                  np.nan, 0.0)[0]
                fill_sell[i] = (matched + net * walked) / sells[i]
            elif net < 0.0:
                walked = _consume(ask_ratio[i], ask_size[i].copy(), -net, 1.0, 1.0, 1.0, 1.0, 0.0, np.nan, np.nan,
                                  np.nan, 0.0)[0]
                fill_buy[i] = (matched - net * walked) / buys[i]
        total = 0.0
        for a in range(n_acc):
            if not liquidated[a]:
                continue
            value = 0.0
            for s in range(n_assets):
                b = balance[a, s]
                if b != 0.0:
                    value += b * m.price[s] * (1.0 + asset_w[s])
            for i in range(n_inst):
                q = position[a, i]
                u = underlying[i]
                coin = m.price[u] * (1.0 + asset_w[u])
                if q != 0.0:
                    mark_now = mark[i] * (1.0 + mark_w[i]) * (fill_sell[i] if q > 0.0 else fill_buy[i])
                    if kind[i] == LINEAR:
                        value += q * (mark_now - entry[a, i])
                    elif kind[i] == INVERSE:
                        value += q * (1.0 / entry[a, i] - 1.0 / mark_now) * coin
                    else:
                        value += q * black76_price(coin, m.strike[i], m.years[i], m.vol[i], m.is_call[i], 0.0)
                if isolated[a] and iso_margin[a, i] != 0.0:
                    value += iso_margin[a, i] * (coin if kind[i] == INVERSE else 1.0)
            if value < 0.0:
                total -= value
        out[j] = total
    return out
