"""Liquidation cascades through the book (SPEC section 4): numba CPU and CUDA side by side.

One cascade is one (snapshot, initial shock s0). The book moves with the market: every
level price is multiplied by ``1 + s0`` and the price starts at ``p = mid (1 + s0)``. For
s0 < 0 the open longs whose liquidation price is >= p are sold into the moved bid side;
for s0 > 0 the shorts whose liquidation price is <= p buy from the moved ask side. Depth
is consumed and never replenished, so after a total volume V has traded the price is that
of the first level whose cumulative depth reaches V. The next round closes the positions
the new price reaches, and so on until a round closes nothing.

Positions are never simulated one by one. They arrive as a table sorted by how soon a
falling (rising) price reaches them, with running sums of quantity and notional, so a
round is one binary search for "how many positions are triggered at p" and a forward walk
of a level pointer. The number of rounds is at most the number of levels + 1 without
extrapolation (a round that does not reach a new level triggers nobody new).

Table layout (built by ``gpu_risk.cascade``), for each side:
  ``keys``: ascending; ``-liquidation_price`` for longs, ``+liquidation_price`` for shorts,
            so that "triggered at p" is ``keys <= side * p`` with side = -1 (longs) / +1;
  ``qty_cum``, ``notional_cum``: length n + 1, running sums in key order, starting at 0.

Output ``out[t, s, :]`` = (final price, liquidated notional, rounds, book exhausted 0/1).

Depth beyond the visible levels (at most one of the two; NaN = none, the cascade stops at
the deepest level). With ``D`` the visible side's size, ``P_L`` its deepest level (moved),
``M`` the moved mid and ``V > D`` the volume traded:

* ``extrapolation`` (flat, relative step x > 0): every further ``x M`` of price holds ``D``
  again, so the price is ``P_L + side (V - D) / D x M``;
* ``exponent`` (power, gamma > 0, fitted by ``gpu_risk.fit_depth_profile``): the cumulative
  size grows as the distance from the mid to the power gamma, through the deepest visible
  level, so the price is ``M + (P_L - M) (V / D)^(1 / gamma)``.

Either is floored at 0 for sells.
"""

from __future__ import annotations

import math

import numpy as np

from ._compile import cpu_kernel, cuda_module, cupy_module

FIELDS = ("final_price", "liquidated_notional", "rounds", "book_exhausted")


@cpu_kernel
def _triggered(keys, query):
    """Number of keys <= query (keys ascending): np.searchsorted(keys, query, 'right')."""
    lo = 0
    hi = keys.size
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] <= query:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cpu_kernel
def _one_cascade(level_price, level_size, factor, side, start_price, keys, qty_cum, notional_cum,
                 extrapolation, exponent, out):
    """The fixed point of one cascade; writes (price, notional, rounds, exhausted) to ``out``."""
    levels = level_price.size
    p = start_price
    closed = 0
    rounds = 0
    exhausted = 0.0
    k = -1  # deepest level reached by the walk so far
    depth = 0.0  # cumulative size of levels 0..k
    deepest = math.nan  # moved price of the deepest level with size > 0 seen so far
    while True:
        n = _triggered(keys, side * p)
        if n <= closed:
            break
        closed = n
        rounds += 1
        volume = qty_cum[n]
        while depth < volume and k + 1 < levels:
            k += 1
            size = level_size[k]
            if size > 0.0 and level_price[k] == level_price[k]:  # skips empty (NaN) levels
                depth += size
                deepest = level_price[k] * factor
        if depth >= volume:
            p = deepest  # the level whose cumulative depth first reaches the volume sold
            continue
        exhausted = 1.0
        if not (extrapolation > 0.0 or exponent > 0.0) or depth == 0.0:
            if deepest == deepest:
                p = deepest
            break
        if exponent > 0.0:
            p = start_price + (deepest - start_price) * (volume / depth) ** (1.0 / exponent)
        else:
            p = deepest + side * ((volume - depth) / depth * extrapolation * start_price)
        if p < 0.0:
            p = 0.0
    out[0] = p
    out[1] = notional_cum[closed]
    out[2] = rounds
    out[3] = exhausted


@cpu_kernel
def cascade_cpu(bid_price, bid_size, ask_price, ask_size, shocks, long_keys, long_qty_cum,
                long_notional_cum, short_keys, short_qty_cum, short_notional_cum, extrapolation, exponent, out):
    """numba: every (snapshot, shock) of a block. Book arrays (T, L); shocks (S,); out (T, S, 4).

    Prices in quote currency, sizes in contract units (base units; USD for inverse), the
    same units as the positions' quantities. A snapshot without a two-sided quote gives NaN.
    """
    n_times, levels = bid_price.shape
    for t in range(n_times):
        mid = 0.5 * (bid_price[t, 0] + ask_price[t, 0])
        for s in range(shocks.size):
            s0 = shocks[s]
            factor = 1.0 + s0
            row = out[t, s]
            if not (mid == mid):
                row[0] = math.nan
                row[1] = math.nan
                row[2] = 0.0
                row[3] = 0.0
            elif s0 < 0.0:
                _one_cascade(bid_price[t], bid_size[t], factor, -1.0, mid * factor, long_keys,
                             long_qty_cum, long_notional_cum, extrapolation, exponent, row)
            else:
                _one_cascade(ask_price[t], ask_size[t], factor, 1.0, mid * factor, short_keys,
                             short_qty_cum, short_notional_cum, extrapolation, exponent, row)
    return out


CUDA_SOURCE = r"""
__device__ long long triggered(const double* keys, long long n, double query)
{
    long long lo = 0, hi = n;
    while (lo < hi) {
        long long mid = (lo + hi) / 2;
        if (keys[mid] <= query) lo = mid + 1; else hi = mid;
    }
    return lo;
}

// One thread per (snapshot, shock): the same walk as _one_cascade in kernels/cascade.py.
extern "C" __global__ void cascade_gpu(
    const double* __restrict__ bid_price, const double* __restrict__ bid_size,
    const double* __restrict__ ask_price, const double* __restrict__ ask_size,
    const double* __restrict__ shocks,
    const double* __restrict__ long_keys, const double* __restrict__ long_qty_cum,
    const double* __restrict__ long_notional_cum, long long n_long,
    const double* __restrict__ short_keys, const double* __restrict__ short_qty_cum,
    const double* __restrict__ short_notional_cum, long long n_short,
    double extrapolation, double exponent, int n_times, int levels, int n_shocks, double* __restrict__ out)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_times * n_shocks) return;
    long long t = i / n_shocks;
    int s = (int)(i % n_shocks);
    double* row = out + i * 4;
    double mid = 0.5 * (bid_price[t * levels] + ask_price[t * levels]);
    if (!(mid == mid)) { row[0] = CUDART_NAN; row[1] = CUDART_NAN; row[2] = 0.0; row[3] = 0.0; return; }
    double s0 = shocks[s];
    double factor = 1.0 + s0;
    bool sell = s0 < 0.0;
    double side = sell ? -1.0 : 1.0;
    const double* price = (sell ? bid_price : ask_price) + t * levels;
    const double* size_ = (sell ? bid_size : ask_size) + t * levels;
    const double* keys = sell ? long_keys : short_keys;
    const double* qty_cum = sell ? long_qty_cum : short_qty_cum;
    const double* notional_cum = sell ? long_notional_cum : short_notional_cum;
    long long n_keys = sell ? n_long : n_short;
    double start = mid * factor, p = start, depth = 0.0, deepest = CUDART_NAN, exhausted = 0.0;
    long long closed = 0;
    int rounds = 0, k = -1;
    while (true) {
        long long n = triggered(keys, n_keys, side * p);
        if (n <= closed) break;
        closed = n;
        rounds += 1;
        double volume = qty_cum[n];
        while (depth < volume && k + 1 < levels) {
            k += 1;
            double q = size_[k];
            if (q > 0.0 && price[k] == price[k]) { depth += q; deepest = price[k] * factor; }
        }
        if (depth >= volume) { p = deepest; continue; }
        exhausted = 1.0;
        if (!(extrapolation > 0.0 || exponent > 0.0) || depth == 0.0) {
            if (deepest == deepest) p = deepest;
            break;
        }
        if (exponent > 0.0) p = start + (deepest - start) * pow(volume / depth, 1.0 / exponent);
        else p = deepest + side * ((volume - depth) / depth * extrapolation * start);
        if (p < 0.0) p = 0.0;
    }
    row[0] = p; row[1] = notional_cum[closed]; row[2] = (double)rounds; row[3] = exhausted;
}
"""

# --fmad=false: no fused multiply-adds, so the GPU rounds like the CPU kernel
CUDA_OPTIONS = ("--fmad=false",)


def cascade_gpu(bid_price, bid_size, ask_price, ask_size, shocks, long_keys, long_qty_cum,
                long_notional_cum, short_keys, short_qty_cum, short_notional_cum, extrapolation, exponent, out):
    """CuPy: the same block on the device (book arrays and ``out`` are CuPy arrays; the
    position tables may be NumPy, they are copied over)."""
    cp = cupy_module()
    n_times, levels = bid_price.shape
    book = [cp.ascontiguousarray(cp.asarray(a), dtype=cp.float64) for a in (bid_price, bid_size, ask_price, ask_size)]
    tables = [cp.ascontiguousarray(cp.asarray(a), dtype=cp.float64) for a in (
        shocks, long_keys, long_qty_cum, long_notional_cum, short_keys, short_qty_cum, short_notional_cum)]
    shocks_d, lk, lq, ln, sk, sq, sn = tables
    total = n_times * shocks_d.size
    threads = 128
    kernel = cuda_module(CUDA_SOURCE, CUDA_OPTIONS).get_function("cascade_gpu")
    kernel(((total + threads - 1) // threads,), (threads,),
           (*book, shocks_d, lk, lq, ln, np.int64(lk.size), sk, sq, sn, np.int64(sk.size),
            np.float64(extrapolation), np.float64(exponent), np.int32(n_times), np.int32(levels),
            np.int32(shocks_d.size), out))
    return out
