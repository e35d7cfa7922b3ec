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

from ._compile import cpu_kernel
from .liquidation import INVERSE, LINEAR, part_margin
from .pricing import black76_price

FIELDS = ("final_price", "liquidated_notional", "accounts_liquidated", "rounds", "book_exhausted")


@cpu_kernel
def _consume(levels, remaining, volume, scale, fallback):
    """Walk one side from its best remaining level: consume ``volume`` (depth is never
    replenished). Returns (the volume-weighted value of what it got, with the part beyond
    the book at the deepest value; the deepest value traded, ``fallback`` if none;
    whether the book ran out). A level's value is ``levels[j] * scale``."""
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
    return (total + left * deepest) / volume, deepest, left > 0.0


@cpu_kernel
def contagion_cpu(bid_price, bid_size, ask_price, ask_size, mid, booked, reference, shocks, balance, position,
                  entry, iso_margin, isolated, m, out, shortfall):
    """numba: every shock of one snapshot time. Books (I, L) (rows of instruments without a
    book are ignored: ``booked`` False); mid (I,); reference (S,) the booked instrument an
    asset's price follows (-1: none); shocks (K,); accounts as for ``liquidation_cpu``; out
    (I, K, 5) and shortfall (K,) are written."""
    n_acc, n_inst = position.shape
    n_assets = balance.shape[1]
    beta, kind, underlying, mark = m.beta, m.kind, m.underlying, m.mark
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
        alive = np.ones(n_acc, dtype=np.bool_)  # cross account, or an isolated account's wallet
        open_pos = position != 0.0
        closed_by = np.zeros((n_acc, n_inst), dtype=np.int8)  # 1: closed in the round being settled
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
            any_closed = False
            wallet_value = np.zeros(n_acc)  # balances at full value, this round's prices
            liquidated_wallet = np.zeros(n_acc, dtype=np.bool_)
            for a in range(n_acc):
                # the cross account, or an isolated account's wallet (part -1 is either)
                if alive[a]:
                    c, r = part_margin(a, -1, 1.0, 0.0, asset_w, mark_w, balance, position, entry, iso_margin,
                                       isolated, m)
                    if c < r:
                        alive[a] = False
                        liquidated_wallet[a] = True
                        any_closed = True
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
                            any_closed = True
                if liquidated_wallet[a]:
                    for s in range(n_assets):
                        wallet_value[a] += balance[a, s] * m.price[s] * (1.0 + asset_w[s])
            if not any_closed:
                break
            for a in range(n_acc):
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
                if net > 0.0:
                    vwap, new, gone = _consume(bid_price[i], bids[i], net, factor[i], before)
                    fill_sell[i] = (matched * before + net * vwap) / sells[i]
                    fill_buy[i] = before
                elif net < 0.0:
                    vwap, new, gone = _consume(ask_price[i], asks[i], -net, factor[i], before)
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
            for a in range(n_acc):
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
                walked = _consume(bid_ratio[i], bid_size[i].copy(), net, 1.0, 1.0)[0]
                fill_sell[i] = (matched + net * walked) / sells[i]
            elif net < 0.0:
                walked = _consume(ask_ratio[i], ask_size[i].copy(), -net, 1.0, 1.0)[0]
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
