"""Exact integer ticks for book prices and sizes: encode with a check, decode in one pass.

A float64 array is stored as int32 ticks ``q`` only when every value comes back bit for
bit: ``q / divisor`` (decimal data: a price parsed from "59958.4", or dollars x 10000
divided by 10000, is the correctly rounded quotient, as IEEE division is) or
``q * multiplier`` (data made as ticks times a tick size, the CF ``scale_factor``
convention). NaN (an empty level) is stored as ``TICK_FILL``. Anything else (infinite,
out of the int32 range, a negative zero, a value off the grid) makes the encoder fail,
and the caller keeps float64.
"""

from __future__ import annotations

import numpy as np
from numba.core import types
from numba.extending import overload

from ._compile import cpu_kernel

TICK_FILL = np.int32(-(2**31))
_LIMIT = 2.0**31 - 1.0


@cpu_kernel
def to_ticks_cpu(values, divisor, multiplier, out):
    """Encode ``values`` (any shape, C order) into ``out`` (int32, same shape) with
    ``divisor`` (> 0) or, when ``divisor`` is 0, ``multiplier``. Returns the flat index
    of the first value that does not round-trip exactly, or -1 when all do."""
    x = values.ravel()
    q_out = out.ravel()
    for i in range(x.size):
        v = x[i]
        if v != v:
            q_out[i] = TICK_FILL
            continue
        q = np.rint(v * divisor) if divisor > 0 else np.rint(v / multiplier)
        if not (-_LIMIT <= q <= _LIMIT):
            return i
        back = q / divisor if divisor > 0 else q * multiplier
        if back != v or (v == 0.0 and 1.0 / v < 0.0):  # a negative zero comes back positive
            return i
        q_out[i] = np.int32(q)
    return -1


def tick_value(q, divisor, multiplier):
    """One value as float64 (numba; the decoding of every ticked array): int32 ticks ``q``
    as ``q / divisor``, or ``q * multiplier`` when ``divisor`` is 0, ``TICK_FILL`` as NaN;
    a float ``q`` as it is. Pass None for the scale not used where the kind is known: the
    kind is then part of the compiled type and a loop over values holds no branch on it
    (with the kind tested at run time LLVM vectorised it with a division on every lane)."""
    if not isinstance(q, (int, np.integer)):
        return q
    if q == TICK_FILL:
        return np.nan
    return q / divisor if divisor is not None and divisor > 0 else q * multiplier


@overload(tick_value)
def _tick_value_impl(q, divisor, multiplier):
    if not isinstance(q, types.Integer):
        return lambda q, divisor, multiplier: q
    if isinstance(divisor, types.NoneType):
        return lambda q, divisor, multiplier: np.nan if q == TICK_FILL else q * multiplier
    if isinstance(multiplier, types.NoneType):
        return lambda q, divisor, multiplier: np.nan if q == TICK_FILL else q / divisor

    def decode(q, divisor, multiplier):
        if q == TICK_FILL:
            return np.nan
        return q / divisor if divisor > 0 else q * multiplier
    return decode


@cpu_kernel
def from_ticks_cpu(ticks, divisor, multiplier, out):
    """Decode int32 ``ticks`` into float64 ``out``: ``q / divisor``, or ``q * multiplier``
    when ``divisor`` is 0; ``TICK_FILL`` becomes NaN."""
    q = ticks.ravel()
    x = out.ravel()
    if divisor > 0:
        for i in range(q.size):
            x[i] = tick_value(q[i], divisor, None)
    else:
        for i in range(q.size):
            x[i] = tick_value(q[i], None, multiplier)
    return out
