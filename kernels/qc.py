"""Every per-snapshot book rule of the SPEC in one pass over a block of rows.

Inputs: ``bid_price``, ``ask_price``, ``bid_size``, ``ask_size`` (n, L) float64, C order.
Output: ``out`` (n,) uint8, one bit per rule (``BOOK_RULE_BITS``); 0 is a valid snapshot.

    bad size     a size is NaN, infinite, negative or above MAX_BOOK_SIZE, or positive at an
                 empty (NaN) level
    bad price    a price is zero, negative, infinite or above MAX_BOOK_PRICE
    ladder       bids not strictly falling / asks not strictly rising with the level, or a
                 filled level below an empty one
    crossed      best bid >= best ask (false where either is empty)

The same rules as the xarray expressions of ``gpu_risk.validate.book_row_flags`` (which
stay the reference, and the path for CuPy data); here every byte is read once, where
those expressions read the book about twenty times.
"""

from __future__ import annotations

import numpy as np

from ._compile import cpu_kernel

# Plausibility bounds: no venue quotes a level of 1e18 units or a price of 1e15. Beyond
# them float64 sums over levels and snapshots overflow or lose every digit of ordinary
# levels (sizes of 1e308 gave NaN microprices and OFI of -1e308), so such rows are bad.
MAX_BOOK_SIZE = 1e18
MAX_BOOK_PRICE = 1e15

BOOK_RULE_BITS = {
    ("qc_bad_size", "bid_size"): 1,
    ("qc_bad_price", "bid_price"): 2,
    ("qc_ladder", "bid_price"): 4,
    ("qc_bad_size", "ask_size"): 8,
    ("qc_bad_price", "ask_price"): 16,
    ("qc_ladder", "ask_price"): 32,
    ("qc_crossed", "bid_price/ask_price"): 64,
}


@cpu_kernel
def book_rules_cpu(bid_price, ask_price, bid_size, ask_size, out):
    """Bit mask of the broken rules of each snapshot (see the module docstring)."""
    n, levels = bid_price.shape
    for i in range(n):
        mask = 0
        for side in range(2):
            price = bid_price if side == 0 else ask_price
            size = bid_size if side == 0 else ask_size
            bad_size = False
            bad_price = False
            ladder = False
            for k in range(levels):
                p = price[i, k]
                q = size[i, k]
                # NaN fails every comparison: each test is written so that NaN lands right
                if not (q >= 0.0) or q > MAX_BOOK_SIZE or (q > 0.0 and p != p):
                    bad_size = True
                if p <= 0.0 or p > MAX_BOOK_PRICE or p == -np.inf:
                    bad_price = True
                if k > 0:
                    upper = price[i, k - 1]
                    if side == 0:
                        wrong = p >= upper
                    else:
                        wrong = p <= upper
                    if wrong or (upper != upper and p == p):
                        ladder = True
            base = 1 if side == 0 else 8
            if bad_size:
                mask |= base
            if bad_price:
                mask |= base * 2
            if ladder:
                mask |= base * 4
        if bid_price[i, 0] >= ask_price[i, 0]:
            mask |= 64
        out[i] = mask
    return out
