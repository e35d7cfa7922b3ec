"""The imbalance kernel reading int32 ticks (``imbalance_ticks_block_cpu``, the stored
path's): the same bits as decoding the ticks to float64 first and running the float64
kernel, for any ticks (empty levels anywhere, the int32 extremes), either scale kind,
with or without a predecessor row."""

import numpy as np
from gpu_risk.kernels.imbalance import (
    imbalance_block_cpu,
    imbalance_ticks_block_cpu,
    n_columns,
    ticks_scale_args,
)
from gpu_risk.kernels.ticks import TICK_FILL, from_ticks_cpu
from hypothesis import given, settings
from hypothesis import strategies as st

BANDS = np.array([0.5, 5.0, 25.0, 100.0])
LIMIT = 2**31 - 1


def tick_values(draw, rows: int, levels: int, low: int, high: int) -> np.ndarray:
    values = np.array(draw(st.lists(st.integers(low, high), min_size=rows * levels, max_size=rows * levels)),
                      dtype=np.int32).reshape(rows, levels)
    empty = np.array(draw(st.lists(st.booleans(), min_size=rows * levels, max_size=rows * levels))).reshape(
        rows, levels)
    rare = np.array(draw(st.lists(st.integers(0, 9), min_size=rows * levels, max_size=rows * levels))).reshape(
        rows, levels)
    values[empty & (rare == 0)] = TICK_FILL  # an empty level, anywhere
    values[rare == 1] = LIMIT  # the largest tick: a price, not an empty level
    return values


@given(data=st.data(), rows=st.integers(1, 40), levels=st.integers(1, 6), has_prev=st.booleans(),
       divisors=st.lists(st.sampled_from([0.0, 10.0, 1000.0, 3.0]), min_size=4, max_size=4))
@settings(max_examples=150, deadline=None)
def test_the_ticks_kernel_equals_decoding_first(data, rows, levels, has_prev, divisors):
    draw = data.draw
    prices = [tick_values(draw, rows + 1, levels, 1, 40) for _ in range(2)]
    sizes = [tick_values(draw, rows + 1, levels, 0, 6) for _ in range(2)]
    ticks = [prices[0], prices[1], sizes[0], sizes[1]]  # bid_price, ask_price, bid_size, ask_size
    multipliers = [0.1, 0.5, 0.001, 1e-8]
    scales = np.array([[d, 0.0 if d > 0 else m] for d, m in zip(divisors, multipliers)])
    floats = [from_ticks_cpu(q, scales[i, 0], scales[i, 1], np.empty(q.shape)) for i, q in enumerate(ticks)]
    steps = draw(st.lists(st.integers(0, 2), min_size=rows - 1, max_size=rows - 1))
    bucket = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
    n_out = int(bucket[-1]) + 1 + draw(st.integers(0, 2))
    expected = np.full((n_out, n_columns(levels, BANDS.size)), -7.0)
    found = expected.copy()
    imbalance_block_cpu(*[f[1:] for f in floats], *[f[0] for f in floats], has_prev, bucket, BANDS, expected)
    imbalance_ticks_block_cpu(*[q[1:] for q in ticks], *[q[0] for q in ticks], has_prev, bucket, BANDS, scales,
                              *ticks_scale_args(scales), found)
    np.testing.assert_array_equal(found, expected)
    assert (found.view(np.int64) == expected.view(np.int64)).all()  # the same bits, NaNs included
