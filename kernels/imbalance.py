"""Imbalance grids for one block of one instrument's snapshots (SPEC section 1).

Inputs (one block of consecutive snapshots, n rows x L levels, float64, C order):
``bid_price``, ``ask_price``, ``bid_size``, ``ask_size``; the snapshot just before the block
(``prev_*``, length L) when ``has_prev``; ``bucket`` (n,) the bucket of each snapshot
counted from the block's first output bucket (non-decreasing, ``bucket[0] == 0``);
``band_bps`` (B,). Output: ``out`` (n_out, 2L + B + 4), one row per time bucket, columns

    [0, L)            ofi[k]              sum over the bucket's snapshots of e[n, k]
    [L, 2L)           depth_imbalance[k]  at the bucket's last snapshot
    2L, 2L+1, 2L+2    mid_price, spread, microprice
    [2L+3, 2L+3+B)    band_imbalance[b]
    2L+3+B            n_updates

e[n,k] = qb[n,k] 1{Pb[n,k] >= Pb[n-1,k]} - qb[n-1,k] 1{Pb[n,k] <= Pb[n-1,k]}
       - qa[n,k] 1{Pa[n,k] <= Pa[n-1,k]} + qa[n-1,k] 1{Pa[n,k] >= Pa[n-1,k]}
(Cont, Kukanov & Stoikov 2014 at k = 1; Xu, Gould & Howison 2018 multi-level OFI), with an
empty bid level (NaN price) compared as -inf and an empty ask level as +inf. Buckets with no
snapshot get ofi 0, n_updates 0 and the state of the last snapshot before them. The
caller splits blocks at bucket boundaries, so every bucket is summed by one call, in time
order: results do not depend on how the time axis is chunked.

The numba kernel makes one pass, bucket by bucket: a flat, fully vectorised loop over the
bucket's stretch of each flattened array for the order-flow terms, the terms added per
level in time order, then the state row of the bucket's last snapshot. The CUDA kernels
(CuPy RawKernel, source below) run one thread per (bucket, level) for OFI, summing the
bucket's snapshots in the same order, and one thread per bucket for the state variables.
"""

from __future__ import annotations

import numpy as np
from numba.core import types
from numba.extending import overload

from ._compile import cpu_inline, cpu_kernel, cuda_module, cupy_module
from .ticks import TICK_FILL, tick_value


def n_columns(levels: int, bands: int) -> int:
    return 2 * levels + bands + 4


@cpu_kernel
def bucket_of_cpu(time_ns, origin_ns, bucket_ns, out):
    """The bucket of each snapshot, ``max((t - origin) // bucket, 0)`` (floor division), in
    one pass: the grid's bucket index for every row (NumPy took three passes)."""
    # sorted times stay in the current bucket for many rows: divide only when leaving it
    b = 0
    low = 0
    high = -1
    for i in range(time_ns.size):
        d = time_ns[i] - origin_ns
        if d < 0:
            out[i] = 0
            continue
        if d < low or d >= high:
            b = d // bucket_ns
            low = b * bucket_ns
            high = low + bucket_ns
        out[i] = b
    return out


@cpu_kernel
def stale_buckets_cpu(time_ns, origin_ns, bucket_ns, max_carry_ns, carried_ns, out):
    """``out[r]`` (bool, one per bucket): bucket r holds no snapshot at or after the origin
    and ends more than ``max_carry_ns`` after the last snapshot before its end (SPEC
    section 1: a gap is never shown as a current book). ``time_ns``: sorted snapshot times
    (a lead-in snapshot before the origin counts as carried, in bucket 0, not as held);
    times past the last bucket count in it. ``carried_ns``: the time of a snapshot before
    all of them carried in (a lead-in row kept apart), or the int64 minimum for none. One
    pass over times and buckets."""
    n_buckets = out.size
    n = time_ns.size
    j = 0
    carried = carried_ns
    for r in range(n_buckets):
        held = False
        end = origin_ns + (r + 1) * bucket_ns
        while j < n and (time_ns[j] < end or r == n_buckets - 1):
            if time_ns[j] > carried:
                carried = time_ns[j]
            if time_ns[j] >= origin_ns:
                held = True
            j += 1
        out[r] = (not held) and carried != np.iinfo(np.int64).min and end - carried > max_carry_ns
    return out


def _ask_key(x):
    """An ask price as compared by the order-flow terms: the price itself, or for int32
    ticks the ticks with an empty level (``TICK_FILL``) above every price, as NaN asks
    compare as +inf. Ticks compare as their prices do (a positive scale keeps the order and
    tells distinct ticks apart), and an empty bid level, ``TICK_FILL``, is already below
    every price, as NaN bids compare as -inf."""
    return x


@overload(_ask_key)
def _ask_key_impl(x):
    if isinstance(x, types.Integer):
        return lambda x: _ASK_EMPTY if x == TICK_FILL else np.int64(x)
    return lambda x: x


# above every int32 tick (an ask of 2**31 - 1 ticks is a price, not an empty level)
_ASK_EMPTY = np.int64(2**31)


@cpu_inline
def _state_row(bid_price, ask_price, bid_size, ask_size, n, band_factors, band_order, cum_bid, cum_ask, out,
               row, scales):
    """Write the state variables of snapshot n into out[row] (columns L .. end-1).
    ``band_factors`` (2, B) holds 1 - b/10^4 and 1 + b/10^4, computed once per block (the
    same operations as inline, so the same bits, without 2 B divisions per bucket).
    ``cum_bid``, ``cum_ask`` (L,) are scratch space for the cumulative depths; ``scales``
    (4, 2) the arrays' tick scales where they are ticks (:func:`tick_value`)."""
    levels = bid_price.shape[1]
    bands = band_factors.shape[1]
    c_b = 0.0
    c_a = 0.0
    for k in range(levels):
        c_b += tick_value(bid_size[n, k], scales[2, 0], scales[2, 1])
        c_a += tick_value(ask_size[n, k], scales[3, 0], scales[3, 1])
        cum_bid[k] = c_b
        cum_ask[k] = c_a
    for k in range(levels):  # independent divisions: vectorised
        out[row, levels + k] = (cum_bid[k] - cum_ask[k]) / (cum_bid[k] + cum_ask[k])
    pb1 = tick_value(bid_price[n, 0], scales[0, 0], scales[0, 1])
    pa1 = tick_value(ask_price[n, 0], scales[1, 0], scales[1, 1])
    qb1 = tick_value(bid_size[n, 0], scales[2, 0], scales[2, 1])
    qa1 = tick_value(ask_size[n, 0], scales[3, 0], scales[3, 1])
    mid = (pb1 + pa1) / 2
    out[row, 2 * levels] = mid
    out[row, 2 * levels + 1] = pa1 - pb1
    out[row, 2 * levels + 2] = (pb1 * qa1 + pa1 * qb1) / (qa1 + qb1)
    # In a valid book (validate_book_dataset) the levels within a band are a prefix of each
    # ladder (bids fall and asks rise with the level; empty levels, of size 0, come last),
    # so a band's depth is the cumulative depth at the number of levels within it: the
    # same additions, in the same order, as summing size x (price within the band).
    # Taking the bands narrowest first, each band's prefix extends the previous one's: one
    # walk down each ladder for all bands (L + B comparisons, not L x B).
    k_b = 0
    k_a = 0
    for jj in range(bands):
        j = band_order[jj]
        low = mid * band_factors[0, j]
        high = mid * band_factors[1, j]
        while k_b < levels and tick_value(bid_price[n, k_b], scales[0, 0], scales[0, 1]) >= low:
            k_b += 1
        while k_a < levels and tick_value(ask_price[n, k_a], scales[1, 0], scales[1, 1]) <= high:
            k_a += 1
        b = cum_bid[k_b - 1] if k_b > 0 else 0.0
        a = cum_ask[k_a - 1] if k_a > 0 else 0.0
        out[row, 2 * levels + 3 + j] = (b - a) / (b + a)


@cpu_inline
def _order_flow(pb, pa, qb, qa, pb0, pa0, qb0, qa0):
    """e of one level: an empty bid level (NaN) compares as -inf, an empty ask level as +inf.
    Each indicator is an ordered comparison or'ed with the NaN case that makes it true
    (e.g. Pb >= Pb0 holds with Pb0 = -inf), and size x indicator is a select of the size or 0
    (the same value for the finite, non-negative sizes of a valid book): no int-to-float
    conversions and no blends, so LLVM vectorises the loop over levels cheaply."""
    bid_up = (pb >= pb0) | (pb0 != pb0)
    bid_down = (pb <= pb0) | (pb != pb)
    ask_down = (pa <= pa0) | (pa0 != pa0)
    ask_up = (pa >= pa0) | (pa != pa)
    return ((qb if bid_up else 0.0) - (qb0 if bid_down else 0.0) - (qa if ask_down else 0.0)
            + (qa0 if ask_up else 0.0))


# order-flow terms of up to this many snapshots per flat loop: few, so that the loop's memory
# reads and the additions into acc interleave finely (256 left memory idle during the additions)
SCRATCH_ROWS = 16


@cpu_kernel
def imbalance_block_cpu(bid_price, ask_price, bid_size, ask_size, prev_bid_price, prev_ask_price,
                        prev_bid_size, prev_ask_size, has_prev, bucket, band_bps, out):
    """numba: one row-major pass over the block (see the module docstring), bucket by bucket."""
    return _block(bid_price, ask_price, bid_size, ask_size, prev_bid_price, prev_ask_price, prev_bid_size,
                  prev_ask_size, has_prev, bucket, band_bps, np.zeros((4, 2)), (None, None), (None, None), out)


@cpu_kernel
def imbalance_ticks_block_cpu(bid_price, ask_price, bid_size, ask_size, prev_bid_price, prev_ask_price,
                              prev_bid_size, prev_ask_size, has_prev, bucket, band_bps, scales, size_divisors,
                              size_multipliers, out):
    """numba: :func:`imbalance_block_cpu` on a block stored as int32 ticks (every array and
    predecessor row int32; ``scales`` (4, 2): each array's divisor and multiplier, in the
    order of the arguments), decoded as they are read: the same bits as decoding the block
    first (tested), without writing and reading back the float64 block. ``size_divisors``,
    ``size_multipliers``: the two size arrays' scales again, each pair with None in place of
    the one not used (:func:`ticks_scale_args`)."""
    return _block(bid_price, ask_price, bid_size, ask_size, prev_bid_price, prev_ask_price, prev_bid_size,
                  prev_ask_size, has_prev, bucket, band_bps, scales, size_divisors, size_multipliers, out)


def ticks_scale_args(scales: np.ndarray) -> tuple[tuple, tuple]:
    """The ``size_divisors`` and ``size_multipliers`` of :func:`imbalance_ticks_block_cpu`
    from ``scales`` (4, 2)."""
    divisors = tuple(float(scales[i, 0]) if scales[i, 0] > 0 else None for i in (2, 3))
    multipliers = tuple(None if scales[i, 0] > 0 else float(scales[i, 1]) for i in (2, 3))
    return divisors, multipliers


@cpu_kernel
def _block(bid_price, ask_price, bid_size, ask_size, prev_bid_price, prev_ask_price, prev_bid_size,
           prev_ask_size, has_prev, bucket, band_bps, scales, size_divisors, size_multipliers, out):
    """The block kernel, for float64 values or int32 ticks (:func:`tick_value`, :func:`_ask_key`)."""
    n_rows, levels = bid_price.shape
    n_out, n_cols = out.shape
    count_col = n_cols - 1
    # a bucket's snapshots are consecutive rows, so their order-flow terms e[n, k] lie on one
    # contiguous stretch of each flattened array, the predecessor of element i at i - L: one
    # flat loop computes them all (fully vectorised, with no per-row remainder of L mod the
    # vector width), then each level's terms are added in time order, as a per-row loop would
    flat_bid_price = bid_price.reshape(bid_price.size)
    flat_ask_price = ask_price.reshape(ask_price.size)
    flat_bid_size = bid_size.reshape(bid_size.size)
    flat_ask_size = ask_size.reshape(ask_size.size)
    terms = np.empty(SCRATCH_ROWS * levels)
    acc = np.empty(levels)  # the current bucket's OFI
    cum_bid = np.empty(levels)
    cum_ask = np.empty(levels)
    band_factors = np.empty((2, band_bps.shape[0]))
    for j in range(band_bps.shape[0]):
        band_factors[0, j] = 1 - band_bps[j] / 1e4
        band_factors[1, j] = 1 + band_bps[j] / 1e4
    band_order = np.argsort(band_bps)  # narrowest band first
    qb_div, qa_div = size_divisors
    qb_mul, qa_mul = size_multipliers
    n = 0
    while n < n_rows:
        r = bucket[n]
        end = n + 1
        while end < n_rows and bucket[end] == r:
            end += 1
        for k in range(levels):
            acc[k] = 0.0
        first = n
        if n == 0:
            if has_prev:
                for k in range(levels):
                    acc[k] += _order_flow(
                        bid_price[0, k], _ask_key(ask_price[0, k]), tick_value(bid_size[0, k], qb_div, qb_mul),
                        tick_value(ask_size[0, k], qa_div, qa_mul), prev_bid_price[k], _ask_key(prev_ask_price[k]),
                        tick_value(prev_bid_size[k], qb_div, qb_mul), tick_value(prev_ask_size[k], qa_div, qa_mul))
            first = 1
        row = first
        while row < end:
            stop = min(end, row + SCRATCH_ROWS)
            base = row * levels
            for i in range((stop - row) * levels):
                # unsigned indices: numba adds no wrap-around of negative indices, which would
                # keep LLVM from vectorising the loop
                j = np.uint64(base + i)
                p = np.uint64(base + i - levels)
                terms[i] = _order_flow(
                    flat_bid_price[j], _ask_key(flat_ask_price[j]), tick_value(flat_bid_size[j], qb_div, qb_mul),
                    tick_value(flat_ask_size[j], qa_div, qa_mul), flat_bid_price[p], _ask_key(flat_ask_price[p]),
                    tick_value(flat_bid_size[p], qb_div, qb_mul), tick_value(flat_ask_size[p], qa_div, qa_mul))
            for q in range(stop - row):
                for k in range(levels):
                    acc[k] += terms[q * levels + k]
            row = stop
        for k in range(levels):
            out[r, k] = acc[k]
        out[r, count_col] = float(end - n)
        _state_row(bid_price, ask_price, bid_size, ask_size, end - 1, band_factors, band_order, cum_bid, cum_ask,
                   out, r, scales)
        # buckets without a snapshot before the next one: OFI 0, no update, this state,
        # written now while this row is in cache (no zeroing pass, no carrying pass)
        next_bucket = bucket[end] if end < n_rows else n_out
        for e in range(r + 1, next_bucket):
            for k in range(levels):
                out[e, k] = 0.0
            for c in range(levels, count_col):
                out[e, c] = out[r, c]
            out[e, count_col] = 0.0
        n = end
    return out


# ----------------------------------------------------------------------------- CUDA

CUDA_SOURCE = r"""
// One block of one instrument's snapshots; see kernels/imbalance.py for the layout.
// first[r] / last[r]: the block's snapshots [first[r], last[r]) fall in output bucket r;
// src[r]: the last snapshot at or before bucket r (its state is the bucket's state).

__device__ __forceinline__ double bid_or_neg_inf(double p) { return isnan(p) ? -CUDART_INF : p; }
__device__ __forceinline__ double ask_or_pos_inf(double p) { return isnan(p) ? CUDART_INF : p; }

extern "C" __global__ void imbalance_ofi(
    const double* __restrict__ bid_price, const double* __restrict__ ask_price,
    const double* __restrict__ bid_size, const double* __restrict__ ask_size,
    const double* __restrict__ prev, int has_prev,      // prev: 4 x L (bid_p, ask_p, bid_s, ask_s)
    const long long* __restrict__ first, const long long* __restrict__ last,
    int n_out, int levels, int n_cols, double* __restrict__ out)
{
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= (long long)n_out * levels) return;
    int r = (int)(tid / levels), k = (int)(tid % levels);
    double sum = 0.0;
    for (long long n = first[r]; n < last[r]; ++n) {
        double pb0, pa0, qb0, qa0;
        if (n > 0) {
            long long p = (n - 1) * levels + k;
            pb0 = bid_price[p]; pa0 = ask_price[p]; qb0 = bid_size[p]; qa0 = ask_size[p];
        } else if (has_prev) {
            pb0 = prev[k]; pa0 = prev[levels + k]; qb0 = prev[2 * levels + k]; qa0 = prev[3 * levels + k];
        } else {
            continue;  // the instrument's very first snapshot contributes 0
        }
        long long i = n * levels + k;
        double pb = bid_or_neg_inf(bid_price[i]), pa = ask_or_pos_inf(ask_price[i]);
        pb0 = bid_or_neg_inf(pb0); pa0 = ask_or_pos_inf(pa0);
        double e = 0.0;
        if (pb >= pb0) e += bid_size[i];
        if (pb <= pb0) e -= qb0;
        if (pa <= pa0) e -= ask_size[i];
        if (pa >= pa0) e += qa0;
        sum += e;
    }
    out[(long long)r * n_cols + k] = sum;
    if (k == 0) out[(long long)r * n_cols + n_cols - 1] = (double)(last[r] - first[r]);
}

extern "C" __global__ void imbalance_state(
    const double* __restrict__ bid_price, const double* __restrict__ ask_price,
    const double* __restrict__ bid_size, const double* __restrict__ ask_size,
    const long long* __restrict__ src, const double* __restrict__ band_bps,
    int n_out, int levels, int bands, int n_cols, double* __restrict__ out)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_out) return;
    long long n = src[r];
    const double* pb = bid_price + n * levels;
    const double* pa = ask_price + n * levels;
    const double* qb = bid_size + n * levels;
    const double* qa = ask_size + n * levels;
    double* row = out + (long long)r * n_cols;
    double cum_bid = 0.0, cum_ask = 0.0;
    for (int k = 0; k < levels; ++k) {
        cum_bid += qb[k]; cum_ask += qa[k];
        row[levels + k] = (cum_bid - cum_ask) / (cum_bid + cum_ask);
    }
    double mid = (pb[0] + pa[0]) / 2;
    row[2 * levels] = mid;
    row[2 * levels + 1] = pa[0] - pb[0];
    row[2 * levels + 2] = (pb[0] * qa[0] + pa[0] * qb[0]) / (qa[0] + qb[0]);
    for (int j = 0; j < bands; ++j) {
        double low = mid * (1 - band_bps[j] / 1e4), high = mid * (1 + band_bps[j] / 1e4);
        double b = 0.0, a = 0.0;
        for (int k = 0; k < levels; ++k) {
            if (pb[k] >= low) b += qb[k];
            if (pa[k] <= high) a += qa[k];
        }
        row[2 * levels + 3 + j] = (b - a) / (b + a);
    }
}
"""

# --fmad=false: no fused multiply-adds, so the GPU rounds like the CPU kernel
CUDA_OPTIONS = ("--fmad=false",)



def imbalance_block_gpu(bid_price, ask_price, bid_size, ask_size, prev_bid_price, prev_ask_price,
                        prev_bid_size, prev_ask_size, has_prev, bucket, band_bps, out):
    """CuPy: the same block on the device (arguments are CuPy arrays, ``out`` included)."""
    cp = cupy_module()
    module = cuda_module(CUDA_SOURCE, CUDA_OPTIONS)
    n_out, n_cols = out.shape
    levels = bid_price.shape[1]
    bands = band_bps.shape[0]
    arrays = [cp.ascontiguousarray(a, dtype=cp.float64) for a in (bid_price, ask_price, bid_size, ask_size)]
    prev = cp.ascontiguousarray(cp.stack([cp.asarray(p, dtype=cp.float64) for p in (
        prev_bid_price, prev_ask_price, prev_bid_size, prev_ask_size)]))
    bucket = cp.asarray(bucket, dtype=cp.int64)
    r = cp.arange(n_out, dtype=cp.int64)
    first = cp.searchsorted(bucket, r, side="left").astype(cp.int64)
    last = cp.searchsorted(bucket, r, side="right").astype(cp.int64)
    src = last - 1  # the block's first bucket always holds its first snapshot, so src >= 0
    threads = 256
    ofi = module.get_function("imbalance_ofi")
    ofi(((n_out * levels + threads - 1) // threads,), (threads,),
        (*arrays, prev, np.int32(bool(has_prev)), first, last, np.int32(n_out), np.int32(levels),
         np.int32(n_cols), out))
    state = module.get_function("imbalance_state")
    state(((n_out + threads - 1) // threads,), (threads,),
          (*arrays, src, cp.asarray(band_bps, dtype=cp.float64), np.int32(n_out), np.int32(levels),
           np.int32(bands), np.int32(n_cols), out))
    return out
