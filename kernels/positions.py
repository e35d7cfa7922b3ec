"""Position aggregates per chunk of accounts: long and short open interest.

For a chunk of accounts with signed positions ``position[a, i]`` and the notional value
of one unit of each instrument ``unit_notional[i]`` (USD), the partial sums are
``out[0, i] = sum_a max(q, 0) * unit_notional[i]`` (long) and
``out[1, i] = sum_a max(-q, 0) * unit_notional[i]`` (short). Rows with
``exclude[a]`` (the qc flags) are left out. Partials of chunks add up.
"""

from __future__ import annotations

from ._compile import cpu_kernel, cupy_module


@cpu_kernel
def open_interest_cpu(position, unit_notional, exclude, out):
    """numba: one row-major pass over the chunk (position is C-contiguous (account, instrument))."""
    n_acc, n_inst = position.shape
    out[:] = 0.0
    for a in range(n_acc):
        if exclude[a]:
            continue
        for i in range(n_inst):
            q = position[a, i]
            if q > 0.0:
                out[0, i] += q
            elif q < 0.0:
                out[1, i] -= q
    for i in range(n_inst):
        out[0, i] *= unit_notional[i]
        out[1, i] *= unit_notional[i]
    return out


def open_interest_gpu(position, unit_notional, exclude, out):
    """CuPy: the same sums with device reductions."""
    cp = cupy_module()
    kept = cp.where(exclude[:, None], 0.0, position)
    out[0] = cp.maximum(kept, 0.0).sum(axis=0) * unit_notional
    out[1] = cp.maximum(-kept, 0.0).sum(axis=0) * unit_notional
    return out
