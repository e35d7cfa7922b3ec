"""The account model (SPEC section 2) and its roots: collateral value C, requirement R,
liquidation prices and common-shock thresholds, per account (numba CPU kernel; the CUDA
kernel, one thread per account, is at the end of the file).

Data of one chunk of accounts (A accounts, S assets, I instruments, K brackets):

    balance (A, S), position (A, I), entry_price (A, I), isolated_margin (A, I),
    isolated (A) bool                                       -- the accounts
    price, haircut (S); kind (I) int (0 linear, 1 inverse, 2 option); underlying (I) int
    (index into the assets); mark (I); strike, years, vol (I); is_call (I) bool;
    floor, mmr, amount (I, K) with NaN for unused brackets   -- the market

A scenario is a factor per asset and per instrument mark; along a path parameterised by t
these are ``1 + asset_w (t - t0)`` and ``1 + mark_w (t - t0)``:

* liquidation price of instrument i: t = f, t0 = 1, asset_w = 1 for i's underlying, mark_w
  = 1 for i only (SPEC: "the mark of this instrument, its underlying asset's price moving
  by the same factor, every other price fixed");
* common shock: t = s, t0 = 0, asset_w = beta, mark_w = the beta of each instrument's
  underlying.

C(t) = sum_{b>0} b p f (1 - h) + sum_j PnL_j and R(t) = sum_{b<0} |b| p f + sum_j MM_j, with
linear PnL q (m f - e), inverse PnL q (1/e - 1/(m f)) p_coin f_coin (in coin, valued at the
coin = underlying's price), option value q Black76(F = p_u f_u, K, T, vol) (options carry no
maintenance margin), MM = |notional| mmr_k - amount_k in the bracket with the largest floor
<= |notional| (linear notional |q| m f; inverse |q| USD). An isolated account is a wallet
(its balances) plus one part per open position: C_i = isolated margin (USD; coin for an
inverse position, valued at the coin's price) + PnL_i, R_i = MM_i (Binance's isolated
formula); it is liquidated when any part is.

Without options on a moving underlying, C - R is piecewise linear in t with kinks where a
notional crosses a bracket floor: the kernel finds every kink, evaluates C - R there and
solves each linear piece in closed form (so the bracket is re-checked at the root); with
options it subdivides the pieces and bisects to 1e-13 relative. The root nearest t0 wins.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from ._compile import cpu_inline, cpu_kernel, cuda_module, cupy_module
from .pricing import black76_price

LINEAR, INVERSE, OPTION = 0, 1, 2

# The market as one record, as the CUDA kernels' ``struct Model``: numba compiles a
# namedtuple of arrays into a struct, so the kernels and their helpers pass one argument.
Market = namedtuple("Market", ("price", "haircut", "beta", "kind", "underlying", "mark", "strike", "years",
                               "vol", "is_call", "floor", "mmr", "amount"))
Market.__doc__ = """The market of the account model: price, haircut, beta (S,) float64 per asset; kind,
underlying (I,) int64; mark, strike, years, vol (I,) float64; is_call (I,) bool; floor, mmr,
amount (I, K) float64, NaN for unused brackets. Host (NumPy) or device (CuPy) arrays."""
# Capacities shared by the numba and CUDA twins: the CUDA source's #defines are generated
# from these (CUDA_DEFINES), and gpu_risk checks them before any task runs.
MAX_KINKS = 512  # bracket boundaries (plus 2) one account's root search can hold
# the kernels' output columns before the liquidation prices: ratio, shock down, shock up,
# collateral value, requirement
FIXED_COLUMNS = 5
OPTION_STEPS = 64  # sub-steps per piece where an option makes C - R curved
GPU_MAX_ASSETS = 64  # per-thread tables of the CUDA kernels (the numba kernels have none)
GPU_MAX_INSTRUMENTS = 64


@cpu_inline
def maintenance(notional, floor, mmr, amount, i):
    """|notional| mmr - amount in the bracket with the largest floor <= |notional|. Floors
    are increasing with unused (NaN) brackets last (``validate_market``), so the scan stops
    at the first floor above the notional."""
    k_best = 0
    for k in range(1, floor.shape[1]):
        f = floor[i, k]
        if not f <= notional:  # above the notional, or NaN: no later bracket applies
            break
        k_best = k
    return notional * mmr[i, k_best] - amount[i, k_best]


@cpu_inline
def instrument_terms(q, entry_price, k, mark_now, coin, strike_i, years_i, vol_i, call_i, floor, mmr,
                     amount, i, with_margin):
    """The one place the position formulas live: (value in USD, maintenance margin in USD,
    USD per unit of isolated margin) of q contracts of instrument i (kind k) entered at
    ``entry_price``, at mark ``mark_now`` with its underlying (coin) at ``coin``. Value is
    PnL for perpetuals (linear q (m - e); inverse q (1/e - 1/m) in coin at the coin's price)
    and the Black-76 value (forward = the underlying's price) for options, which carry no
    maintenance margin. ``with_margin=False`` skips the bracket lookup."""
    if k == LINEAR:
        mm = maintenance(abs(q) * mark_now, floor, mmr, amount, i) if with_margin else 0.0
        return q * (mark_now - entry_price), mm, 1.0
    if k == INVERSE:
        mm = maintenance(abs(q), floor, mmr, amount, i) if with_margin else 0.0
        return q * (1.0 / entry_price - 1.0 / mark_now) * coin, mm, coin
    return q * black76_price(coin, strike_i, years_i, vol_i, call_i, 0.0), 0.0, 1.0


@cpu_inline
def position_terms(a, i, t, t0, asset_w, mark_w, position, entry, m, with_margin=True):
    """``instrument_terms`` of account a's position in instrument i along the path at t: the
    mark at ``mark (1 + mark_w (t - t0))``, the underlying at ``price (1 + asset_w (t - t0))``."""
    price, haircut, beta, kind, underlying, mark, strike, years, vol, is_call, floor, mmr, amount = m
    u = underlying[i]
    mark_now = mark[i] * (1.0 + mark_w[i] * (t - t0))
    coin = price[u] * (1.0 + asset_w[u] * (t - t0))
    return instrument_terms(position[a, i], entry[a, i], kind[i], mark_now, coin, strike[i], years[i], vol[i],
                            is_call[i], floor, mmr, amount, i, with_margin)


@cpu_inline
def part_margin(a, part, t, t0, asset_w, mark_w, balance, position, entry, iso_margin, isolated, m):
    """(C, R) of account a's part along the path at t: part -1 is the cross account (or the
    wallet of an isolated account), part i >= 0 the isolated position in instrument i."""
    price, haircut = m.price, m.haircut
    c = 0.0
    r = 0.0
    n_inst = position.shape[1]
    if part < 0:
        for s in range(balance.shape[1]):
            b = balance[a, s]
            if b != 0.0:
                p = price[s] * (1.0 + asset_w[s] * (t - t0))
                if b > 0.0:
                    c += b * p * (1.0 - haircut[s])
                else:
                    r -= b * p
        if isolated[a]:
            return c, r
    for i in range(n_inst):
        if part >= 0 and i != part:
            continue
        if position[a, i] == 0.0:
            if part >= 0:
                c += iso_margin[a, i]
            continue
        value, mm, margin_unit = position_terms(a, i, t, t0, asset_w, mark_w, position, entry, m)
        c += value
        r += mm
        if part >= 0:
            c += iso_margin[a, i] * margin_unit
    return c, r


@cpu_kernel
def _gap(a, part, t, t0, asset_w, mark_w, balance, position, entry, iso_margin, isolated, m):
    c, r = part_margin(a, part, t, t0, asset_w, mark_w, balance, position, entry, iso_margin, isolated, m)
    if r <= 0.0:
        return 1.0  # nothing required: C/R is infinite, never liquidated (SPEC), whatever C is
    return c - r


@cpu_kernel
def nearest_root(a, part, t0, lo, hi, asset_w, mark_w, balance, position, entry, iso_margin,
                 isolated, m, kinks, side):
    """The root of C - R in [lo, t0] (side -1, the nearest below t0) or [t0, hi] (side +1);
    NaN if none. ``kinks`` is scratch space (MAX_KINKS,)."""
    kind, underlying, mark, floor = m.kind, m.underlying, m.mark, m.floor
    n_inst = position.shape[1]
    curved = False
    n_k = 0
    kinks[n_k] = t0
    n_k += 1
    kinks[n_k] = lo if side < 0 else hi
    n_k += 1
    for i in range(n_inst):
        if part >= 0 and i != part:
            continue
        q = position[a, i]
        if q == 0.0:
            continue
        if kind[i] == OPTION:
            if asset_w[underlying[i]] != 0.0:
                curved = True
            continue
        if kind[i] == LINEAR and mark_w[i] != 0.0:
            for k in range(1, floor.shape[1]):
                fl = floor[i, k]
                if fl == fl and n_k < MAX_KINKS:
                    # |q| m (1 + w (t - t0)) = floor
                    t = t0 + (fl / (abs(q) * mark[i]) - 1.0) / mark_w[i]
                    if (side < 0 and lo < t < t0) or (side > 0 and t0 < t < hi):
                        kinks[n_k] = t
                        n_k += 1
    # insertion sort in place (a handful of kinks; no allocation), walked away from t0
    for x in range(1, n_k):
        v = kinks[x]
        y = x - 1
        while y >= 0 and kinks[y] > v:
            kinks[y + 1] = kinks[y]
            y -= 1
        kinks[y + 1] = v
    first = 0 if side > 0 else n_k - 1
    g_near = _gap(a, part, kinks[first], t0, asset_w, mark_w, balance, position, entry, iso_margin,
                  isolated, m)
    if g_near == 0.0:
        return kinks[first]
    for j in range(1, n_k):
        t_near = kinks[j - 1] if side > 0 else kinks[n_k - j]
        t_far = kinks[j] if side > 0 else kinks[n_k - 1 - j]
        steps = OPTION_STEPS if curved else 1
        for step in range(1, steps + 1):
            t_b = t_near + (t_far - t_near) * step / steps
            t_a = t_near + (t_far - t_near) * (step - 1) / steps
            g_a = g_near
            g_b = _gap(a, part, t_b, t0, asset_w, mark_w, balance, position, entry, iso_margin, isolated, m)
            if g_b == 0.0:
                return t_b
            if (g_a < 0.0) != (g_b < 0.0):
                if not curved:  # linear on this piece: the closed form
                    return t_a + g_a * (t_b - t_a) / (g_a - g_b)
                # bisection down to adjacent floats, then the endpoint nearer zero
                x0, x1, g0, g1 = t_a, t_b, g_a, g_b
                for _ in range(1100):
                    mid = 0.5 * (x0 + x1)
                    if mid == x0 or mid == x1:
                        break
                    gm = _gap(a, part, mid, t0, asset_w, mark_w, balance, position, entry,
                              iso_margin, isolated, m)
                    if gm == 0.0:
                        return mid
                    if (gm < 0.0) == (g0 < 0.0):
                        x0, g0 = mid, gm
                    else:
                        x1, g1 = mid, gm
                return x0 if abs(g0) <= abs(g1) else x1
            g_near = g_b
    return np.nan


@cpu_kernel
def liquidation_cpu(balance, position, entry, iso_margin, isolated, m, f_lo, f_hi, s_lo, s_hi, out):
    """For each account a: out[a, 0] collateral ratio, out[a, 1] shock down, out[a, 2] shock
    up, out[a, 3] collateral value C and out[a, 4] requirement R at the current prices (USD,
    summed over an isolated account's parts), out[a, FIXED_COLUMNS + i] liquidation price of
    instrument i (mark currency). ``m``: the market (:class:`Market`)."""
    beta, underlying, mark, kind = m.beta, m.underlying, m.mark, m.kind
    n_acc, n_inst = position.shape
    if out.shape[0] != n_acc or out.shape[1] != n_inst + FIXED_COLUMNS:
        raise ValueError("out must have FIXED_COLUMNS + one column per instrument, a row per account")
    n_assets = balance.shape[1]
    kinks = np.empty(MAX_KINKS)
    asset_w = np.zeros(n_assets)
    mark_w = np.zeros(n_inst)
    shock_asset_w = beta.copy()
    shock_mark_w = np.empty(n_inst)
    for i in range(n_inst):
        shock_mark_w[i] = beta[underlying[i]]
    # every price must stay positive: 1 + beta s > 0 for the largest beta (s down) and the
    # most negative beta (s up)
    beta_max = 0.0
    beta_min = 0.0
    for s_i in range(n_assets):
        beta_max = max(beta_max, beta[s_i])
        beta_min = min(beta_min, beta[s_i])
    if beta_max > 0.0:
        s_lo = max(s_lo, -(1.0 - 1e-9) / beta_max)
    if beta_min < 0.0:
        s_hi = min(s_hi, (1.0 - 1e-9) / -beta_min)
    for a in range(n_acc):
        n_parts = 1
        if isolated[a]:
            for i in range(n_inst):
                if position[a, i] != 0.0:
                    n_parts += 1
        # collateral ratio: the lowest of the account's parts
        ratio = np.inf
        c_total = 0.0
        r_total = 0.0
        for p_idx in range(n_parts):
            part = _part_index(a, p_idx, position, isolated)
            c, r = part_margin(a, part, 0.0, 0.0, asset_w, mark_w, balance, position, entry,
                               iso_margin, isolated, m)
            c_total += c
            r_total += r
            value = c / r if r > 0.0 else np.inf
            if value < ratio:
                ratio = value
        out[a, 0] = ratio
        out[a, 3] = c_total
        out[a, 4] = r_total
        # common shocks: the nearest over the parts, on each side
        for col, side, lo, hi in ((1, -1, s_lo, 0.0), (2, 1, 0.0, s_hi)):
            best = np.nan
            for p_idx in range(n_parts):
                part = _part_index(a, p_idx, position, isolated)
                s = nearest_root(a, part, 0.0, lo, hi, shock_asset_w, shock_mark_w, balance,
                                 position, entry, iso_margin, isolated, m, kinks, side)
                if s == s and not (best == best and abs(best) <= abs(s)):
                    best = s
            out[a, col] = best
        # liquidation price of each instrument the account is exposed to
        for i in range(n_inst):
            u = underlying[i]
            if not _exposed(a, i, balance, position, kind, underlying):
                out[a, FIXED_COLUMNS + i] = np.nan
                continue
            asset_w[u] = 1.0
            mark_w[i] = 1.0
            best = np.nan
            for p_idx in range(n_parts):
                part = _part_index(a, p_idx, position, isolated)
                if part >= 0 and part != i:
                    continue  # another isolated position does not see this price
                for side in (-1, 1):
                    f = nearest_root(a, part, 1.0, f_lo if side < 0 else 1.0, f_hi if side > 0 else 1.0,
                                     asset_w, mark_w, balance, position, entry, iso_margin,
                                     isolated, m, kinks, side)
                    if f == f and f > 0.0 and not (best == best and abs(best - 1.0) <= abs(f - 1.0)):
                        best = f
            out[a, FIXED_COLUMNS + i] = best * mark[i]
            asset_w[u] = 0.0
            mark_w[i] = 0.0
    return out


@cpu_kernel
def _exposed(a, i, balance, position, kind, underlying):
    """Whether account a's C - R moves with instrument i's mark and underlying: it holds i,
    holds or owes the underlying, or holds an inverse perpetual or option on it (other
    linear marks stay fixed on this path)."""
    if position[a, i] != 0.0:
        return True
    u = underlying[i]
    if balance[a, u] != 0.0:
        return True
    for j in range(position.shape[1]):
        if position[a, j] != 0.0 and underlying[j] == u and kind[j] != LINEAR:
            return True
    return False


@cpu_kernel
def _part_index(a, p_idx, position, isolated):
    """Part p_idx of account a: 0 is the cross account or wallet (-1), then the isolated
    positions in instrument order."""
    if p_idx == 0:
        return -1
    seen = 0
    for i in range(position.shape[1]):
        if position[a, i] != 0.0:
            seen += 1
            if seen == p_idx:
                return i
    return -1


# ----------------------------------------------------------------------------- CUDA
# The same model and root search, one thread per account, for CuPy (RawModule). The CPU
# kernel above and this one are tested against the same reference (tests/test_liquidation.py).

CUDA_DEFINES = (f"#define LINEAR {LINEAR}\n#define INVERSE {INVERSE}\n#define OPTION {OPTION}\n"
                f"#define MAX_KINKS {MAX_KINKS}\n#define OPTION_STEPS {OPTION_STEPS}\n"
                f"#define MAX_ASSETS {GPU_MAX_ASSETS}\n#define MAX_INST {GPU_MAX_INSTRUMENTS}\n"
                f"#define FIXED_COLUMNS {FIXED_COLUMNS}\n")
CUDA_SOURCE = CUDA_DEFINES + r"""

struct Model {
    const double *balance, *position, *entry, *iso_margin;
    const bool *isolated;
    const double *price, *haircut, *beta;
    const long long *kind, *underlying;
    const double *mark, *strike, *years, *vol;
    const bool *is_call;
    const double *floor, *mmr, *amount;
    int n_assets, n_inst, n_brackets;
};

__device__ double norm_cdf(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

__device__ double black76(double f, double k, double t, double vol, bool call) {
    if (t <= 0.0 || vol <= 0.0) return fmax(call ? f - k : k - f, 0.0);
    double sd = vol * sqrt(t);
    double d1 = (log(f / k) + 0.5 * sd * sd) / sd, d2 = d1 - sd;
    return call ? f * norm_cdf(d1) - k * norm_cdf(d2) : k * norm_cdf(-d2) - f * norm_cdf(-d1);
}

__device__ double maintenance(const Model& m, double notional, int i) {
    int best = 0;  // floors increase, unused (NaN) brackets last: stop at the first above
    for (int k = 1; k < m.n_brackets; ++k) {
        double f = m.floor[i * m.n_brackets + k];
        if (!(f <= notional)) break;
        best = k;
    }
    return notional * m.mmr[i * m.n_brackets + best] - m.amount[i * m.n_brackets + best];
}

// (C, R) of account a's part (-1: cross account or wallet; i: isolated position i) at t
__device__ void part_margin(const Model& m, long long a, int part, double t, double t0,
                            const double* asset_w, const double* mark_w, double* c_out, double* r_out) {
    double c = 0.0, r = 0.0;
    if (part < 0) {
        for (int s = 0; s < m.n_assets; ++s) {
            double b = m.balance[a * m.n_assets + s];
            if (b != 0.0) {
                double p = m.price[s] * (1.0 + asset_w[s] * (t - t0));
                if (b > 0.0) c += b * p * (1.0 - m.haircut[s]); else r -= b * p;
            }
        }
        if (m.isolated[a]) { *c_out = c; *r_out = r; return; }
    }
    for (int i = 0; i < m.n_inst; ++i) {
        if (part >= 0 && i != part) continue;
        double q = m.position[a * m.n_inst + i];
        double iso = m.iso_margin[a * m.n_inst + i];
        if (q == 0.0) { if (part >= 0) c += iso; continue; }
        int u = (int)m.underlying[i];
        double f_u = 1.0 + asset_w[u] * (t - t0);
        double mk = m.mark[i] * (1.0 + mark_w[i] * (t - t0));
        long long k = m.kind[i];
        if (k == LINEAR) {
            c += q * (mk - m.entry[a * m.n_inst + i]);
            r += maintenance(m, fabs(q) * mk, i);
            if (part >= 0) c += iso;
        } else if (k == INVERSE) {
            double coin = m.price[u] * f_u;
            c += q * (1.0 / m.entry[a * m.n_inst + i] - 1.0 / mk) * coin;
            r += maintenance(m, fabs(q), i);
            if (part >= 0) c += iso * coin;
        } else {
            c += q * black76(m.price[u] * f_u, m.strike[i], m.years[i], m.vol[i], m.is_call[i]);
            if (part >= 0) c += iso;
        }
    }
    *c_out = c; *r_out = r;
}

__device__ double gap(const Model& m, long long a, int part, double t, double t0,
                      const double* asset_w, const double* mark_w) {
    double c, r;
    part_margin(m, a, part, t, t0, asset_w, mark_w, &c, &r);
    if (r <= 0.0) return 1.0;  // nothing required: never liquidated
    return c - r;
}

__device__ double nearest_root(const Model& m, long long a, int part, double t0, double lo, double hi,
                               const double* asset_w, const double* mark_w, int side) {
    double kinks[MAX_KINKS];
    bool curved = false;
    int n_k = 0;
    kinks[n_k++] = t0;
    kinks[n_k++] = side < 0 ? lo : hi;
    for (int i = 0; i < m.n_inst; ++i) {
        if (part >= 0 && i != part) continue;
        double q = m.position[a * m.n_inst + i];
        if (q == 0.0) continue;
        if (m.kind[i] == OPTION) { if (asset_w[m.underlying[i]] != 0.0) curved = true; continue; }
        if (m.kind[i] == LINEAR && mark_w[i] != 0.0) {
            for (int k = 1; k < m.n_brackets; ++k) {
                double fl = m.floor[i * m.n_brackets + k];
                if (fl == fl && n_k < MAX_KINKS) {
                    double t = t0 + (fl / (fabs(q) * m.mark[i]) - 1.0) / mark_w[i];
                    if ((side < 0 && lo < t && t < t0) || (side > 0 && t0 < t && t < hi)) kinks[n_k++] = t;
                }
            }
        }
    }
    for (int x = 1; x < n_k; ++x) {  // insertion sort
        double v = kinks[x]; int y = x - 1;
        while (y >= 0 && kinks[y] > v) { kinks[y + 1] = kinks[y]; --y; }
        kinks[y + 1] = v;
    }
    int first = side > 0 ? 0 : n_k - 1;
    double g_near = gap(m, a, part, kinks[first], t0, asset_w, mark_w);
    if (g_near == 0.0) return kinks[first];
    for (int j = 1; j < n_k; ++j) {
        double t_near = side > 0 ? kinks[j - 1] : kinks[n_k - j];
        double t_far = side > 0 ? kinks[j] : kinks[n_k - 1 - j];
        int steps = curved ? OPTION_STEPS : 1;
        for (int step = 1; step <= steps; ++step) {
            double t_b = t_near + (t_far - t_near) * step / steps;
            double t_a = t_near + (t_far - t_near) * (step - 1) / steps;
            double g_a = g_near;
            double g_b = gap(m, a, part, t_b, t0, asset_w, mark_w);
            if (g_b == 0.0) return t_b;
            if ((g_a < 0.0) != (g_b < 0.0)) {
                if (!curved) return t_a + g_a * (t_b - t_a) / (g_a - g_b);
                double x0 = t_a, x1 = t_b, g0 = g_a, g1 = g_b;
                for (int it = 0; it < 1100; ++it) {
                    double mid = 0.5 * (x0 + x1);
                    if (mid == x0 || mid == x1) break;
                    double gm = gap(m, a, part, mid, t0, asset_w, mark_w);
                    if (gm == 0.0) return mid;
                    if ((gm < 0.0) == (g0 < 0.0)) { x0 = mid; g0 = gm; } else { x1 = mid; g1 = gm; }
                }
                return fabs(g0) <= fabs(g1) ? x0 : x1;
            }
            g_near = g_b;
        }
    }
    return CUDART_NAN;
}

__device__ int part_index(const Model& m, long long a, int p_idx) {
    if (p_idx == 0) return -1;
    int seen = 0;
    for (int i = 0; i < m.n_inst; ++i)
        if (m.position[a * m.n_inst + i] != 0.0 && ++seen == p_idx) return i;
    return -1;
}

__device__ bool exposed(const Model& m, long long a, int i) {
    if (m.position[a * m.n_inst + i] != 0.0) return true;
    int u = (int)m.underlying[i];
    if (m.balance[a * m.n_assets + u] != 0.0) return true;
    for (int j = 0; j < m.n_inst; ++j)
        if (m.position[a * m.n_inst + j] != 0.0 && m.underlying[j] == u && m.kind[j] != LINEAR) return true;
    return false;
}

extern "C" __global__ void liquidation_gpu(
    const double* balance, const double* position, const double* entry, const double* iso_margin,
    const bool* isolated, const double* price, const double* haircut, const double* beta,
    const long long* kind, const long long* underlying, const double* mark, const double* strike,
    const double* years, const double* vol, const bool* is_call, const double* floor,
    const double* mmr, const double* amount, int n_acc, int n_assets, int n_inst, int n_brackets,
    double f_lo, double f_hi, double s_lo, double s_hi, double* out)
{
    long long a = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n_acc) return;
    Model m = {balance, position, entry, iso_margin, isolated, price, haircut, beta, kind, underlying,
               mark, strike, years, vol, is_call, floor, mmr, amount, n_assets, n_inst, n_brackets};
    double zero_a[MAX_ASSETS], zero_i[MAX_INST], shock_a[MAX_ASSETS], shock_i[MAX_INST];
    double beta_max = 0.0, beta_min = 0.0;
    for (int s = 0; s < n_assets; ++s) {
        zero_a[s] = 0.0; shock_a[s] = beta[s];
        beta_max = fmax(beta_max, beta[s]); beta_min = fmin(beta_min, beta[s]);
    }
    for (int i = 0; i < n_inst; ++i) { zero_i[i] = 0.0; shock_i[i] = beta[underlying[i]]; }
    if (beta_max > 0.0) s_lo = fmax(s_lo, -(1.0 - 1e-9) / beta_max);
    if (beta_min < 0.0) s_hi = fmin(s_hi, (1.0 - 1e-9) / -beta_min);
    double* row = out + a * (n_inst + FIXED_COLUMNS);
    int n_parts = 1;
    if (isolated[a]) for (int i = 0; i < n_inst; ++i) if (position[a * n_inst + i] != 0.0) ++n_parts;
    double ratio = CUDART_INF, c_total = 0.0, r_total = 0.0;
    for (int p = 0; p < n_parts; ++p) {
        double c, r;
        part_margin(m, a, part_index(m, a, p), 0.0, 0.0, zero_a, zero_i, &c, &r);
        c_total += c; r_total += r;
        double v = r > 0.0 ? c / r : CUDART_INF;
        if (v < ratio) ratio = v;
    }
    row[0] = ratio;
    row[3] = c_total;
    row[4] = r_total;
    for (int side = -1; side <= 1; side += 2) {
        double best = CUDART_NAN;
        for (int p = 0; p < n_parts; ++p) {
            double s = nearest_root(m, a, part_index(m, a, p), 0.0, side < 0 ? s_lo : 0.0,
                                    side < 0 ? 0.0 : s_hi, shock_a, shock_i, side);
            if (s == s && !(best == best && fabs(best) <= fabs(s))) best = s;
        }
        row[side < 0 ? 1 : 2] = best;
    }
    for (int i = 0; i < n_inst; ++i) {
        if (!exposed(m, a, i)) { row[FIXED_COLUMNS + i] = CUDART_NAN; continue; }
        int u = (int)underlying[i];
        zero_a[u] = 1.0; zero_i[i] = 1.0;
        double best = CUDART_NAN;
        for (int p = 0; p < n_parts; ++p) {
            int part = part_index(m, a, p);
            if (part >= 0 && part != i) continue;
            for (int side = -1; side <= 1; side += 2) {
                double f = nearest_root(m, a, part, 1.0, side < 0 ? f_lo : 1.0, side > 0 ? f_hi : 1.0,
                                        zero_a, zero_i, side);
                if (f == f && f > 0.0 && !(best == best && fabs(best - 1.0) <= fabs(f - 1.0))) best = f;
            }
        }
        row[FIXED_COLUMNS + i] = best * mark[i];
        zero_a[u] = 0.0; zero_i[i] = 0.0;
    }
}
"""
CUDA_OPTIONS = ("--fmad=false",)


def device_market(cp, m: Market) -> Market:
    """``m`` on the device, each array contiguous in the dtype the CUDA ``struct Model`` reads."""
    f64 = lambda x: cp.ascontiguousarray(cp.asarray(x, dtype=cp.float64))  # noqa: E731
    return Market(price=f64(m.price), haircut=f64(m.haircut), beta=f64(m.beta),
                  kind=cp.ascontiguousarray(cp.asarray(m.kind, dtype=cp.int64)),
                  underlying=cp.ascontiguousarray(cp.asarray(m.underlying, dtype=cp.int64)),
                  mark=f64(m.mark), strike=f64(m.strike), years=f64(m.years), vol=f64(m.vol),
                  is_call=cp.ascontiguousarray(cp.asarray(m.is_call, dtype=cp.bool_)),
                  floor=f64(m.floor), mmr=f64(m.mmr), amount=f64(m.amount))


def check_gpu_capacity(n_assets: int, n_instruments: int) -> None:
    """The CUDA kernels' per-thread tables hold GPU_MAX_ASSETS and GPU_MAX_INSTRUMENTS
    (gpu_risk checks this before any task runs; this is the kernels' own guard)."""
    if n_assets > GPU_MAX_ASSETS or n_instruments > GPU_MAX_INSTRUMENTS:
        raise ValueError(f"the GPU kernel handles at most {GPU_MAX_ASSETS} assets and "
                         f"{GPU_MAX_INSTRUMENTS} instruments, not {n_assets} and {n_instruments}")


def liquidation_gpu(balance, position, entry, iso_margin, isolated, m, f_lo, f_hi, s_lo, s_hi, out):
    """CuPy: ``liquidation_cpu``'s contract, one thread per account (account arrays and
    ``out`` on the device; ``m`` anywhere, copied over)."""
    cp = cupy_module()
    n_acc, n_inst = position.shape
    if out.shape != (n_acc, n_inst + FIXED_COLUMNS):
        raise ValueError("out must have FIXED_COLUMNS + one column per instrument, a row per account")
    check_gpu_capacity(balance.shape[1], n_inst)
    f64 = lambda x: cp.ascontiguousarray(cp.asarray(x, dtype=cp.float64))  # noqa: E731
    args = [f64(balance), f64(position), f64(entry), f64(iso_margin),
            cp.ascontiguousarray(cp.asarray(isolated, dtype=cp.bool_).ravel()), *device_market(cp, m)]
    threads = 128
    cuda_module(CUDA_SOURCE, CUDA_OPTIONS).get_function("liquidation_gpu")(
        ((n_acc + threads - 1) // threads,), (threads,),
        (*args, np.int32(n_acc), np.int32(balance.shape[1]), np.int32(n_inst), np.int32(m.floor.shape[1]),
         np.float64(f_lo), np.float64(f_hi), np.float64(s_lo), np.float64(s_hi), out))
    return out
