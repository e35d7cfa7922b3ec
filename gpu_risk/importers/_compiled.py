"""Compiled parts of the importers: an order book kept as sorted arrays, the scan of
Binance depth-stream lines (JSON, validated) into arrays, and the two book-rebuilding
state machines (Binance diffs, Tardis ``incremental_book_L2`` rows).

Why compiled: the importers' work is one dependent pass over every message (parse, then
update the book, then read its top), which Python runs at 50-300 thousand lines/s. These
loops run it at disk speed. They are importer internals, not kernels: the state machine
is sequential by nature, so there is no GPU twin.

Exactness: a decimal string is converted as ``m / 10**k`` with the integer ``m`` below
10**15 and ``k`` <= 22, both exact doubles, so the one IEEE division gives the correctly
rounded value, the same double as Python's ``float()``. Anything outside that fast path
(exponents, long mantissas, ``NaN``, escapes in keys, unusual shapes) makes the scanner
hand the line to the Python path, which parses it with ``json`` as before: every line is
either understood exactly here or by Python, never guessed.

"""

from __future__ import annotations

import numpy as np

from ..kernels._compile import cpu_inline, cpu_kernel

POW10 = np.array([10.0 ** k for k in range(23)])  # all exact doubles
MAX_MANTISSA = 10 ** 15  # below 2**53: exact as a double

# line kinds of the Binance scan
SLOW, DIFF, TICKER, OTHER, BLANK = 0, 1, 2, 3, 4
# engine stop reasons
DONE, PYTHON = 0, 1
# Binance engine state (int64 array)
S_INSTRUMENT, S_READY, S_HAS_LAST, S_LAST_U, S_HAS_SID, S_SID, S_FUTURES, S_TICKERS = range(8)
STATE_SIZE = 8
# Binance engine counters (int64 array)
(C_APPLIED, C_STALE, C_GAPS, C_GAP_POS, C_GAP_CODE, C_GAP_A, C_GAP_B, C_GAP_SID, C_COMPARED, C_AGREE,
 C_DIS_POS, C_DIS_U, C_OUT) = range(13)
COUNTERS_SIZE = 13
GAP_COVER, GAP_PU, GAP_U = 1, 2, 3
# Tardis engine state (int64 array)
(T_KNOWN, T_IN_SNAPSHOT, T_HAS_PENDING, T_PEND_TS, T_PEND_LOCAL, T_PEND_LINE, T_HAS_LAST, T_LAST,
 T_RESETS, T_BEFORE) = range(10)
TARDIS_STATE_SIZE = 10


# ---------------------------------------------------------------------------------------
# the book: each side a sorted array and a small sorted buffer of new levels
#
# A side (0: bids, key = price; 1: asks, key = -price) keeps its levels in ``keys[side]``
# ascending, best last, with deleted levels left as tombstones (quantity 0), and the levels
# added since the last compaction in a buffer of at most DELTA sorted keys. A change of an
# existing level or a deletion is a binary search and one write; an addition shifts at
# most DELTA entries; every DELTA additions (or when a quarter of the side is tombstones)
# one merge pass compacts the side. Binance books grow to thousands of levels a side, so
# this is O(log n) per change where a plain sorted array is O(n).
# count: [levels in main (bids, asks), tombstones (bids, asks), levels in buffer (bids, asks)]

DELTA = 64


@cpu_inline
def _search(keys, n, key):
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cpu_kernel
def book_compact(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, side):
    """Merge the side's buffer into its main array, dropping tombstones."""
    n, m = count[side], count[4 + side]
    i = j = r = 0
    while i < n or j < m:
        if j >= m or (i < n and keys[side, i] < dkeys[side, j]):
            if qty[side, i] != 0.0:
                scratch_keys[r] = keys[side, i]
                scratch_qty[r] = qty[side, i]
                r += 1
            i += 1
        else:
            scratch_keys[r] = dkeys[side, j]
            scratch_qty[r] = dqty[side, j]
            r += 1
            j += 1
    for t in range(r):
        keys[side, t] = scratch_keys[t]
        qty[side, t] = scratch_qty[t]
    count[side] = r
    count[2 + side] = 0
    count[4 + side] = 0


@cpu_inline
def book_set(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, side, key, q):
    """Set the level ``key`` of ``side`` to quantity ``q`` (0 deletes). The caller
    guarantees room for DELTA more entries than the side's levels and additions."""
    n = count[side]
    i = _search(keys[side], n, key)
    if i < n and keys[side, i] == key:
        old = qty[side, i]
        qty[side, i] = q
        if q != 0.0:
            if old == 0.0:
                count[2 + side] -= 1
        elif old != 0.0:
            count[2 + side] += 1
            if count[2 + side] > 64 and 4 * count[2 + side] > n:
                book_compact(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, side)
        return
    m = count[4 + side]
    j = _search(dkeys[side], m, key)
    if j < m and dkeys[side, j] == key:
        if q != 0.0:
            dqty[side, j] = q
        else:
            for t in range(j, m - 1):
                dkeys[side, t] = dkeys[side, t + 1]
                dqty[side, t] = dqty[side, t + 1]
            count[4 + side] = m - 1
        return
    if q == 0.0:
        return
    for t in range(m, j, -1):
        dkeys[side, t] = dkeys[side, t - 1]
        dqty[side, t] = dqty[side, t - 1]
    dkeys[side, j] = key
    dqty[side, j] = q
    count[4 + side] = m + 1
    if m + 1 == DELTA:
        book_compact(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, side)


@cpu_kernel
def book_top(keys, qty, dkeys, dqty, count, side, levels, scale, prices, sizes):
    """The best ``levels`` of a side, best first (missing levels: NaN price, size 0)."""
    sign = 1.0 - 2.0 * side
    i = count[side] - 1
    j = count[4 + side] - 1
    k = 0
    while k < levels:
        while i >= 0 and qty[side, i] == 0.0:
            i -= 1
        if i < 0 and j < 0:
            break
        if j < 0 or (i >= 0 and keys[side, i] > dkeys[side, j]):
            prices[k] = sign * keys[side, i]
            sizes[k] = qty[side, i] * scale
            i -= 1
        else:
            prices[k] = sign * dkeys[side, j]
            sizes[k] = dqty[side, j] * scale
            j -= 1
        k += 1
    for t in range(k, levels):
        prices[t] = np.nan
        sizes[t] = 0.0


@cpu_kernel
def book_load(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, side, prices, quantities):
    """Apply levels in order (a snapshot or a stored book) to one side."""
    sign = 1.0 - 2.0 * side
    for k in range(prices.size):
        book_set(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, side, sign * prices[k], quantities[k])


class SortedBook:
    """Both sides of one book (see above), as arrays the compiled loops share."""

    def __init__(self, capacity: int = 4096):
        self.keys, self.qty = np.empty((2, capacity)), np.empty((2, capacity))
        self.dkeys, self.dqty = np.empty((2, DELTA)), np.empty((2, DELTA))
        self.count = np.zeros(6, dtype=np.int64)
        self.scratch_keys, self.scratch_qty = np.empty(capacity), np.empty(capacity)

    def parts(self) -> tuple:
        """The arrays, in the order the compiled functions take them."""
        return self.keys, self.qty, self.dkeys, self.dqty, self.count, self.scratch_keys, self.scratch_qty

    def reserve(self, extra: int) -> None:
        """Room for ``extra`` more levels on each side."""
        need = int(self.count[:2].max()) + extra + DELTA + 1
        if need > self.keys.shape[1]:
            size = max(need, 2 * self.keys.shape[1])
            for name in ("keys", "qty"):
                old = getattr(self, name)
                new = np.empty((2, size))
                new[:, :old.shape[1]] = old
                setattr(self, name, new)
            self.scratch_keys, self.scratch_qty = np.empty(size), np.empty(size)

    def clear(self) -> None:
        self.count[:] = 0

    def load(self, bids, asks) -> None:
        """Set levels (price, quantity pairs, in order) on each side."""
        for side, levels in enumerate((bids, asks)):
            levels = np.asarray(levels, dtype=np.float64).reshape(-1, 2)
            self.reserve(len(levels))
            book_load(*self.parts(), side, levels[:, 0].copy(), levels[:, 1].copy())

    def levels(self) -> tuple[np.ndarray, np.ndarray]:
        """Every level, best first: (bids, asks), each (n, 2) of (price, quantity)."""
        out = []
        for side in (0, 1):
            book_compact(*self.parts(), side)
            n, sign = int(self.count[side]), 1.0 - 2.0 * side
            out.append(np.stack([sign * self.keys[side, :n][::-1], self.qty[side, :n][::-1]], axis=1))
        return out[0], out[1]


# ---------------------------------------------------------------------------------------
# JSON, validated, without building Python objects


@cpu_inline
def _ws(b, i, e):
    while i < e:
        c = b[i]
        if c == 32 or c == 9 or c == 10 or c == 13:
            i += 1
        else:
            break
    return i


@cpu_kernel
def _string_end(b, i, e):
    """``b[i]`` is a quote: the index after the closing quote, or -1 (invalid)."""
    i += 1
    while i < e:
        c = b[i]
        if c == 34:
            return i + 1
        if c == 92:
            if i + 1 >= e:
                return -1
            d = b[i + 1]
            if d == 117:
                if i + 5 >= e:
                    return -1
                for k in range(i + 2, i + 6):
                    h = b[k]
                    if not ((48 <= h <= 57) or (65 <= h <= 70) or (97 <= h <= 102)):
                        return -1
                i += 6
                continue
            if d == 34 or d == 92 or d == 47 or d == 98 or d == 102 or d == 110 or d == 114 or d == 116:
                i += 2
                continue
            return -1
        if c < 32:
            return -1
        i += 1
    return -1


@cpu_kernel
def _number_end(b, i, e):
    """A JSON number at ``i``: the index after it, or -1."""
    if i < e and b[i] == 45:
        i += 1
    if i >= e:
        return -1
    if b[i] == 48:
        i += 1
    elif 49 <= b[i] <= 57:
        while i < e and 48 <= b[i] <= 57:
            i += 1
    else:
        return -1
    if i < e and b[i] == 46:
        i += 1
        start = i
        while i < e and 48 <= b[i] <= 57:
            i += 1
        if i == start:
            return -1
    if i < e and (b[i] == 101 or b[i] == 69):
        i += 1
        if i < e and (b[i] == 43 or b[i] == 45):
            i += 1
        start = i
        while i < e and 48 <= b[i] <= 57:
            i += 1
        if i == start:
            return -1
    return i


@cpu_kernel
def _literal_end(b, i, e):
    """true, false or null at ``i``: the index after it, or -1."""
    c = b[i]
    if c == 116 and i + 4 <= e and b[i + 1] == 114 and b[i + 2] == 117 and b[i + 3] == 101:
        return i + 4
    if (c == 102 and i + 5 <= e and b[i + 1] == 97 and b[i + 2] == 108 and b[i + 3] == 115
            and b[i + 4] == 101):
        return i + 5
    if c == 110 and i + 4 <= e and b[i + 1] == 117 and b[i + 2] == 108 and b[i + 3] == 108:
        return i + 4
    return -1


@cpu_kernel
def _key_colon(b, i, e):
    """A key and its colon at ``i`` (after whitespace): the index after the colon, or -1."""
    i = _ws(b, i, e)
    if i >= e or b[i] != 34:
        return -1
    i = _string_end(b, i, e)
    if i < 0:
        return -1
    i = _ws(b, i, e)
    if i >= e or b[i] != 58:
        return -1
    return i + 1


@cpu_kernel
def _value_end(b, i, e, stack):
    """Any JSON value at ``i`` (after whitespace), validated: the index after it, or -1."""
    depth = 0
    while True:
        i = _ws(b, i, e)
        if i >= e:
            return -1
        c = b[i]
        if c == 123 or c == 91:
            if depth == stack.size:
                return -1
            i = _ws(b, i + 1, e)
            if i >= e:
                return -1
            if (c == 123 and b[i] == 125) or (c == 91 and b[i] == 93):
                i += 1  # empty: a complete value, handled below
            else:
                stack[depth] = c
                depth += 1
                if c == 123:
                    i = _key_colon(b, i, e)
                    if i < 0:
                        return -1
                continue
        elif c == 34:
            i = _string_end(b, i, e)
        elif c == 116 or c == 102 or c == 110:
            i = _literal_end(b, i, e)
        else:
            i = _number_end(b, i, e)
        if i < 0:
            return -1
        # a value is complete: close containers, or go on after a comma
        while True:
            if depth == 0:
                return i
            i = _ws(b, i, e)
            if i >= e:
                return -1
            c = b[i]
            top = stack[depth - 1]
            if c == 44:
                i += 1
                if top == 123:
                    i = _key_colon(b, i, e)
                    if i < 0:
                        return -1
                break
            if (top == 123 and c == 125) or (top == 91 and c == 93):
                i += 1
                depth -= 1
                continue
            return -1


@cpu_inline
def _quoted_decimal(b, i, e):
    """A JSON string at ``i`` holding a decimal (digits, one optional point, optional minus),
    read in one pass as Python's float() reads it: (value, ok, index after the closing quote
    or -1 when the string is invalid). ``ok`` is False outside the exact fast path (more
    than 15 significant digits, more than 22 decimals, anything else in the string): the
    string is then validated, not read, and the line goes to Python."""
    j = i + 1
    negative = False
    if j < e and b[j] == 45:
        negative = True
        j += 1
    m = 0
    digits = 0
    fraction = 0
    point = False
    any_digit = False
    fast = True
    while j < e:
        c = b[j]
        if 48 <= c <= 57:
            any_digit = True
            if m != 0 or c != 48:
                m = m * 10 + (c - 48)
                digits += 1
            if point:
                fraction += 1
        elif c == 46 and not point:
            point = True
        elif c == 34:
            break
        else:
            fast = False
            break
        j += 1
    if not fast or j >= e or not any_digit or digits > 15 or fraction > 22:
        return 0.0, False, _string_end(b, i, e)
    v = m / POW10[fraction]
    return (-v if negative else v), True, j + 1


@cpu_kernel
def _integer(b, i, e):
    """A JSON integer at ``i``: (value, index after it); index -1 when it is not a plain
    integer of at most 18 digits (a fraction or exponent, or longer)."""
    negative = False
    if i < e and b[i] == 45:
        negative = True
        i += 1
    start = i
    v = 0
    while i < e and 48 <= b[i] <= 57:
        v = v * 10 + (b[i] - 48)
        i += 1
    n = i - start
    if n == 0 or n > 18 or (n > 1 and b[start] == 48):
        return 0, -1
    if i < e and (b[i] == 46 or b[i] == 101 or b[i] == 69):
        return 0, -1
    return (-v if negative else v), i


@cpu_inline
def _levels(b, i, e, prices, quantities, k):
    """``[["p","q"], ...]`` at ``i``: levels appended at ``k``; (index after, new k), index
    -1 when the value is anything else or a number is outside the fast path."""
    if b[i] != 91:
        return -1, k
    i = _ws(b, i + 1, e)
    if i < e and b[i] == 93:
        return i + 1, k
    while True:
        i = _ws(b, i, e)
        if i >= e or b[i] != 91:
            return -1, k
        for part in range(2):
            i = _ws(b, i + 1, e)
            if i >= e or b[i] != 34:
                return -1, k
            v, ok, end = _quoted_decimal(b, i, e)
            if not ok:
                return -1, k
            if part == 0:
                prices[k] = v
            else:
                quantities[k] = v
            i = _ws(b, end, e)
            if i >= e or b[i] != (44 if part == 0 else 93):
                return -1, k
        k += 1
        i = _ws(b, i + 1, e)
        if i >= e:
            return -1, k
        if b[i] == 93:
            return i + 1, k
        if b[i] != 44:
            return -1, k
        i += 1


# message fields found by _message (int64 slots)
(F_E_KIND, F_HAS_E, F_E, F_HAS_U, F_U, F_HAS_LU, F_LU, F_HAS_PU, F_PU, F_B_KIND, F_A_KIND, F_HAS_BQ,
 F_HAS_AQ, F_HAS_S, F_HAS_PS, F_HAS_LAST_UPDATE, F_STREAM_TICKER, F_DATA, F_ODD, F_B_START, F_B_END,
 F_A_START, F_A_END) = range(23)
FIELDS = 23


DEPTH_UPDATE = np.frombuffer(b"depthUpdate", dtype=np.uint8).copy()
BOOK_TICKER = np.frombuffer(b"bookTicker", dtype=np.uint8).copy()
K_E_KIND, K_E, K_U, K_LU, K_PU, K_B, K_A, K_BQ, K_AQ, K_S, K_PS, K_LAST_UPDATE, K_STREAM, K_DATA = range(14)


@cpu_kernel
def _equals(b, s, e, text):
    if e - s != text.size:
        return False
    for j in range(text.size):
        if b[s + j] != text[j]:
            return False
    return True


@cpu_kernel
def _contains(b, s, e, text):
    for start in range(s, e - text.size + 1):
        if _equals(b, start, start + text.size, text):
            return True
    return False


@cpu_kernel
def _has_escape(b, s, e):
    for j in range(s, e):
        if b[j] == 92:
            return True
    return False


@cpu_kernel
def _key_id(b, s, e):
    """Which of the keys the importer reads ``b[s:e]`` is (K_*), or -1."""
    n = e - s
    c = b[s] if n else 0
    if n == 1:
        if c == 101:
            return K_E_KIND  # e
        if c == 69:
            return K_E
        if c == 85:
            return K_U
        if c == 117:
            return K_LU  # u
        if c == 98:
            return K_B  # b
        if c == 97:
            return K_A  # a
        if c == 66:
            return K_BQ  # B
        if c == 65:
            return K_AQ  # A
        if c == 115:
            return K_S
        return -1
    if n == 2 and c == 112:  # pu, ps
        if b[s + 1] == 117:
            return K_PU
        if b[s + 1] == 115:
            return K_PS
        return -1
    if n == 4 and c == 100 and b[s + 1] == 97 and b[s + 2] == 116 and b[s + 3] == 97:
        return K_DATA
    if n == 6 and c == 115 and b[s + 1] == 116 and b[s + 2] == 114 and b[s + 3] == 101 and b[s + 4] == 97 \
            and b[s + 5] == 109:
        return K_STREAM
    if n == 12 and c == 108 and b[s + 4] == 85 and b[s + 10] == 73:  # lastUpdateId
        for j, ch in enumerate(b"lastUpdateId"):
            if b[s + j] != ch:
                return -1
        return K_LAST_UPDATE
    return -1


@cpu_kernel
def _message(b, i, e, top_f, data_f, top_g, data_g, prices, quantities, k, stack):
    """The object at ``i``: its fields into ``top_f`` (ints) and ``top_g`` (ticker decimals),
    those of its ``data`` object, if any, into ``data_f`` and ``data_g``; depth levels
    appended at ``k``. Returns (index after the object or -1, new k). One pass: the data
    object is read where it stands, not skipped and read again."""
    top_f[:] = 0
    data_f[:] = 0
    top_f[F_DATA] = -1
    data_f[F_DATA] = -1
    f = top_f
    g = top_g
    top = True
    i = _ws(b, i, e)
    if i >= e or b[i] != 123:
        return -1, k
    i = _ws(b, i + 1, e)
    if i < e and b[i] == 125:
        return i + 1, k
    while True:
        i = _ws(b, i, e)
        if i >= e or b[i] != 34:
            return -1, k
        ks = i + 1
        i = _string_end(b, i, e)
        if i < 0:
            return -1, k
        ke = i - 1
        i = _ws(b, i, e)
        if i >= e or b[i] != 58:
            return -1, k
        i = _ws(b, i + 1, e)
        if i >= e:
            return -1, k
        c = b[i]
        name = _key_id(b, ks, ke)
        if _has_escape(b, ks, ke):  # an escape in a key: Python decides
            f[F_ODD] = 1
        if name == K_E_KIND:
            if c == 34:
                end = _string_end(b, i, e)
                if end < 0:
                    return -1, k
                if _has_escape(b, i + 1, end - 1):
                    f[F_ODD] = 1
                f[F_E_KIND] = 1 if _equals(b, i + 1, end - 1, DEPTH_UPDATE) else (
                    2 if _equals(b, i + 1, end - 1, BOOK_TICKER) else 3)
                i = end
            else:
                f[F_E_KIND] = 3
                i = _value_end(b, i, e, stack)
        elif K_E <= name <= K_PU:
            v, end = _integer(b, i, e)
            if end < 0:
                f[F_ODD] = 1
                i = _value_end(b, i, e, stack)
            else:
                slot = (F_HAS_E, F_HAS_U, F_HAS_LU, F_HAS_PU)[name - K_E]
                f[slot] = 1
                f[slot + 1] = v
                i = end
        elif name == K_B or name == K_A:  # levels (depth) or a decimal (bookTicker)
            kind = F_B_KIND if name == K_B else F_A_KIND
            if f[kind] != 0:
                f[F_ODD] = 1  # a repeated key: Python decides
            if c == 91:
                start = k
                i, k = _levels(b, i, e, prices, quantities, k)
                f[kind] = 1
                f[F_B_START if name == K_B else F_A_START] = start
                f[F_B_END if name == K_B else F_A_END] = k
            elif c == 34:
                v, ok, end = _quoted_decimal(b, i, e)
                if end < 0:
                    return -1, k
                if not ok:
                    f[F_ODD] = 1
                g[0 if name == K_B else 2] = v
                f[kind] = 2
                i = end
            else:
                f[F_ODD] = 1
                i = _value_end(b, i, e, stack)
        elif name == K_BQ or name == K_AQ:
            if c == 34:
                v, ok, end = _quoted_decimal(b, i, e)
                if end < 0:
                    return -1, k
                if not ok:
                    f[F_ODD] = 1
                g[1 if name == K_BQ else 3] = v
                f[F_HAS_BQ if name == K_BQ else F_HAS_AQ] = 1
                i = end
            else:
                f[F_ODD] = 1
                i = _value_end(b, i, e, stack)
        elif name == K_S:
            f[F_HAS_S] = 1
            i = _value_end(b, i, e, stack)
        elif name == K_PS:
            f[F_HAS_PS] = 1
            i = _value_end(b, i, e, stack)
        elif name == K_LAST_UPDATE:
            f[F_HAS_LAST_UPDATE] = 1
            i = _value_end(b, i, e, stack)
        elif name == K_STREAM and top:
            if c == 34:
                end = _string_end(b, i, e)
                if end < 0:
                    return -1, k
                if _contains(b, i + 1, end - 1, BOOK_TICKER):
                    f[F_STREAM_TICKER] = 1
                if _has_escape(b, i + 1, end - 1):
                    f[F_ODD] = 1
                i = end
            else:
                f[F_ODD] = 1
                i = _value_end(b, i, e, stack)
        elif name == K_DATA and top and c == 123:
            f[F_DATA] = i
            i = _ws(b, i + 1, e)
            f = data_f
            g = data_g
            top = False
            if i < e and b[i] == 125:  # an empty data object
                i += 1
                f = top_f
                g = top_g
                top = True
            else:
                continue  # its first key
        elif name == K_DATA and top:
            f[F_ODD] = 1
            i = _value_end(b, i, e, stack)
        else:
            i = _value_end(b, i, e, stack)
        if i < 0:
            return -1, k
        while True:  # after a value: the next key, or the end of the data object or the line's
            i = _ws(b, i, e)
            if i >= e:
                return -1, k
            if b[i] == 125:
                i += 1
                if top:
                    return i, k
                f = top_f
                g = top_g
                top = True
                continue
            if b[i] != 44:
                return -1, k
            i += 1
            break


@cpu_kernel
def scan_binance(buf, n_lines, kind, line_start, line_end, event, first_id, last_id, prev_id, has_prev,
                 bid_range, ask_range, prices, quantities, ticker):
    """Split ``buf`` into lines ``<local_ts> <json>`` and read each: ``kind`` DIFF
    (depthUpdate: E, U, u, pu, its bids and asks appended to ``prices``/``quantities``),
    TICKER (bookTicker: its u and b, B, a, A), OTHER (valid JSON of another kind), BLANK,
    or SLOW (anything else: Python reads it). Returns the number of lines."""
    f = np.zeros(FIELDS, dtype=np.int64)
    top = np.zeros(FIELDS, dtype=np.int64)
    g = np.zeros(4)
    g_top = np.zeros(4)
    stack = np.zeros(64, dtype=np.uint8)
    k = 0
    pos = 0
    end_all = buf.size
    line = 0
    while pos < end_all and line < n_lines:
        s = pos
        e = s
        while e < end_all and buf[e] != 10:
            e += 1
        pos = e + 1
        line_start[line] = s
        line_end[line] = e
        kind[line] = SLOW
        j = _ws(buf, s, e)
        if j >= e:
            kind[line] = BLANK
            line += 1
            continue
        # the local time stamp: digits, then one space
        t = s
        while t < e and 48 <= buf[t] <= 57:
            t += 1
        if t == s or t - s > 19 or t >= e or buf[t] != 32:
            line += 1
            continue
        k0 = k
        after, k = _message(buf, t + 1, e, top, f, g_top, g, prices, quantities, k, stack)
        if after < 0 or _ws(buf, after, e) != e or top[F_ODD] or top[F_HAS_LAST_UPDATE] or f[F_ODD]:
            k = k0
            line += 1
            continue
        fields = top
        values = g_top
        if top[F_DATA] >= 0:  # the message is the data object
            fields = f
            values = g
        if fields[F_E_KIND] == 1:
            if (fields[F_HAS_E] and fields[F_HAS_U] and fields[F_HAS_LU] and fields[F_B_KIND] == 1
                    and fields[F_A_KIND] == 1 and fields[F_HAS_S] and 0 <= fields[F_E] < 9_000_000_000_000):
                kind[line] = DIFF
                event[line] = fields[F_E]
                first_id[line] = fields[F_U]
                last_id[line] = fields[F_LU]
                prev_id[line] = fields[F_PU]
                has_prev[line] = fields[F_HAS_PU] + 2 * fields[F_HAS_PS]
                bid_range[line, 0] = fields[F_B_START]
                bid_range[line, 1] = fields[F_B_END]
                ask_range[line, 0] = fields[F_A_START]
                ask_range[line, 1] = fields[F_A_END]
            else:
                k = k0
        elif top[F_STREAM_TICKER] or fields[F_E_KIND] == 2:
            k = k0
            if (fields[F_HAS_LU] and fields[F_B_KIND] == 2 and fields[F_A_KIND] == 2 and fields[F_HAS_BQ]
                    and fields[F_HAS_AQ]):
                kind[line] = TICKER
                last_id[line] = fields[F_LU]
                for q in range(4):
                    ticker[line, q] = values[q]
        else:
            k = k0
            kind[line] = OTHER
        line += 1
    return line


# ---------------------------------------------------------------------------------------
# Binance: the documented sequencing rules over scanned lines


@cpu_kernel
def _compare_tickers(state, counters, has_next, next_first, tq_id, tq_values, tq_pos, keys, qty, dkeys, dqty,
                     count, dis_values, best):
    """Tickers the book has reached exactly (last applied u <= id < next diff's U) are
    compared with its best levels; later ones wait, earlier ones are dropped."""
    base = state[S_LAST_U] if state[S_HAS_LAST] else state[S_SID]
    keep = 0
    book_top(keys, qty, dkeys, dqty, count, 0, 1, 1.0, best[0:1], best[1:2])
    book_top(keys, qty, dkeys, dqty, count, 1, 1, 1.0, best[2:3], best[3:4])
    bb, bbq, ba, baq = best[0], best[1], best[2], best[3]
    for q in range(state[S_TICKERS]):
        tid = tq_id[q]
        if not state[S_READY] or tid < base:
            continue
        if has_next and tid >= next_first:
            tq_id[keep] = tid
            tq_pos[keep] = tq_pos[q]
            for j in range(4):
                tq_values[keep, j] = tq_values[q, j]
            keep += 1
            continue
        counters[C_COMPARED] += 1
        if (bb == tq_values[q, 0] and ba == tq_values[q, 2] and bbq == tq_values[q, 1]
                and baq == tq_values[q, 3]):
            counters[C_AGREE] += 1
        elif counters[C_DIS_POS] < 0:
            counters[C_DIS_POS] = tq_pos[q]
            counters[C_DIS_U] = tid
            for j in range(4):
                dis_values[j] = tq_values[q, j]
            dis_values[4] = bb
            dis_values[5] = bbq
            dis_values[6] = ba
            dis_values[7] = baq
    state[S_TICKERS] = keep


@cpu_kernel
def binance_run(start, stop, kind, pos, event, first_id, last_id, prev_id, has_prev, bid_range, ask_range,
                prices, quantities, ticker, state, counters, tq_id, tq_values, tq_pos, dis_values, keys, qty,
                dkeys, dqty, count, scratch_keys, scratch_qty, levels, scale, out_time, out_pos, out_block):
    """Lines ``start:stop`` through Binance's rules (see the importer's docstring). Returns
    (the line it stopped at, DONE or PYTHON): PYTHON when the line needs the Python path
    (an unscanned line; the first diff, which names the instrument; a diff before any REST
    snapshot, kept for it; a futures diff without ``pu``, an error)."""
    best = np.empty(4)
    for i in range(start, stop):
        kd = kind[i]
        if kd == BLANK or kd == OTHER:
            continue
        if kd == SLOW:
            return i, PYTHON
        if kd == TICKER:
            q = state[S_TICKERS]
            tq_id[q] = last_id[i]
            tq_pos[q] = pos[i]
            for j in range(4):
                tq_values[q, j] = ticker[i, j]
            state[S_TICKERS] = q + 1
            continue
        # a depth diff
        if not state[S_INSTRUMENT]:
            return i, PYTHON
        if not state[S_READY]:
            if not state[S_HAS_SID]:
                return i, PYTHON
            continue  # after a gap: unknown until the next REST snapshot
        futures = state[S_FUTURES]
        if futures and has_prev[i] % 2 == 0:
            return i, PYTHON
        U = first_id[i]
        u = last_id[i]
        gap = 0
        a = 0
        bb = 0
        if not state[S_HAS_LAST]:
            sid = state[S_SID]
            if (futures and u < sid) or (not futures and u <= sid):
                counters[C_STALE] += 1
                continue
            if not ((U <= sid <= u) if futures else (U <= sid + 1 <= u)):
                gap = GAP_COVER
                a, bb = U, u
        else:
            last = state[S_LAST_U]
            if u <= last:
                counters[C_STALE] += 1
                continue
            if futures and prev_id[i] != last:
                gap = GAP_PU
                a, bb = last, prev_id[i]
            elif not futures and U != last + 1:
                gap = GAP_U
                a, bb = last + 1, U
        if gap:
            counters[C_GAPS] += 1
            if counters[C_GAP_POS] < 0:
                counters[C_GAP_POS] = pos[i]
                counters[C_GAP_CODE] = gap
                counters[C_GAP_A] = a
                counters[C_GAP_B] = bb
                counters[C_GAP_SID] = state[S_SID]
            state[S_READY] = 0
            state[S_TICKERS] = 0
            continue
        _compare_tickers(state, counters, True, U, tq_id, tq_values, tq_pos, keys, qty, dkeys, dqty, count,
                         dis_values, best)
        for j in range(bid_range[i, 0], bid_range[i, 1]):
            book_set(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, 0, prices[j], quantities[j])
        for j in range(ask_range[i, 0], ask_range[i, 1]):
            book_set(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, 1, -prices[j], quantities[j])
        state[S_HAS_LAST] = 1
        state[S_LAST_U] = u
        counters[C_APPLIED] += 1
        r = counters[C_OUT]
        book_top(keys, qty, dkeys, dqty, count, 0, levels, scale, out_block[0, r], out_block[1, r])
        book_top(keys, qty, dkeys, dqty, count, 1, levels, scale, out_block[2, r], out_block[3, r])
        out_time[r] = event[i] * 1_000_000
        out_pos[r] = pos[i]
        counters[C_OUT] = r + 1
    return stop, DONE


@cpu_kernel
def compare_remaining(state, counters, tq_id, tq_values, tq_pos, dis_values, keys, qty, dkeys, dqty, count,
                      scratch_keys, scratch_qty):
    """At the end of the files: the tickers still waiting see the final book."""
    _compare_tickers(state, counters, False, 0, tq_id, tq_values, tq_pos, keys, qty, dkeys, dqty, count,
                     dis_values, np.empty(4))


# ---------------------------------------------------------------------------------------
# Tardis incremental_book_L2: one symbol's rows


@cpu_kernel
def tardis_run(stamp, local, is_snapshot, is_bid, price, amount, line, state, keys, qty, dkeys, dqty, count,
               scratch_keys, scratch_qty, levels, final, out_time, out_block):
    """One symbol's rows in file order: a message (rows sharing ``timestamp`` and
    ``local_timestamp``) is emitted as a snapshot of the top ``levels`` once the next
    message begins (or, with ``final``, at the end); a run of snapshot rows after updates
    resets the book. Returns (snapshots written, the line whose time went backwards or -1)."""
    r = 0
    n = stamp.size
    for i in range(n + 1):
        last_row = i == n
        if state[T_HAS_PENDING] and ((last_row and final) or (not last_row and (
                stamp[i] != state[T_PEND_TS] or local[i] != state[T_PEND_LOCAL]))):
            t = state[T_PEND_TS]
            if state[T_HAS_LAST] and t < state[T_LAST]:
                return r, state[T_PEND_LINE]
            state[T_HAS_LAST] = 1
            state[T_LAST] = t
            book_top(keys, qty, dkeys, dqty, count, 0, levels, 1.0, out_block[0, r], out_block[1, r])
            book_top(keys, qty, dkeys, dqty, count, 1, levels, 1.0, out_block[2, r], out_block[3, r])
            out_time[r] = t * 1000
            r += 1
            state[T_HAS_PENDING] = 0
        if last_row:
            break
        if is_snapshot[i] and not state[T_IN_SNAPSHOT]:
            if state[T_KNOWN]:
                state[T_RESETS] += 1
            count[:] = 0
            state[T_KNOWN] = 1
        state[T_IN_SNAPSHOT] = 1 if is_snapshot[i] else 0
        if not state[T_KNOWN]:
            state[T_BEFORE] += 1
            continue
        if is_bid[i]:
            book_set(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, 0, price[i], amount[i])
        else:
            book_set(keys, qty, dkeys, dqty, count, scratch_keys, scratch_qty, 1, -price[i], amount[i])
        state[T_HAS_PENDING] = 1
        state[T_PEND_TS] = stamp[i]
        state[T_PEND_LOCAL] = local[i]
        state[T_PEND_LINE] = line[i]
    return r, -1
