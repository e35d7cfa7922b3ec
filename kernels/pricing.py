"""Option pricing: Black-76 (European option on a forward/futures price).

Value of a call: e^{-rT} [F N(d1) - K N(d2)], put: e^{-rT} [K N(-d2) - F N(-d1)],
d1 = (ln(F/K) + sigma^2 T / 2) / (sigma sqrt T), d2 = d1 - sigma sqrt T
(Black 1976, "The pricing of commodity contracts", J. Financial Economics 3).
Crypto venues quote options on the perpetual/futures price with r = 0, which is the
default here. At or after expiry (T <= 0) the value is the intrinsic value.
"""

from __future__ import annotations

import math

import numpy as np

from ._compile import cpu_inline, cpu_kernel


@cpu_inline
def _norm_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


@cpu_inline
def black76_price(forward, strike, years, vol, is_call, rate=0.0):
    """Black-76 value of one option (per unit of underlying, quote currency)."""
    if years <= 0.0 or vol <= 0.0:
        intrinsic = forward - strike if is_call else strike - forward
        return max(intrinsic, 0.0)
    sd = vol * math.sqrt(years)
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    discount = math.exp(-rate * years)
    if is_call:
        return discount * (forward * _norm_cdf(d1) - strike * _norm_cdf(d2))
    return discount * (strike * _norm_cdf(-d2) - forward * _norm_cdf(-d1))


@cpu_kernel
def black76_price_array(forward, strike, years, vol, is_call, out):
    """Element-wise :func:`black76_price` over 1-D arrays (rate 0) into ``out``."""
    for i in range(forward.shape[0]):
        out[i] = black76_price(forward[i], strike[i], years[i], vol[i], is_call[i], 0.0)
    return out


def black76(forward, strike, years, vol, is_call) -> np.ndarray:
    """NumPy-friendly wrapper of :func:`black76_price_array` (broadcasts its inputs)."""
    f, k, t, v, c = np.broadcast_arrays(*(np.asarray(a) for a in (forward, strike, years, vol, is_call)))
    shape = f.shape
    out = np.empty(f.size, dtype=np.float64)
    black76_price_array(f.ravel().astype(np.float64), k.ravel().astype(np.float64),
                        t.ravel().astype(np.float64), v.ravel().astype(np.float64),
                        c.ravel().astype(np.bool_), out)
    return out.reshape(shape)
