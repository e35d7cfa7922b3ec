"""An independent plain-NumPy/Python reference of SPEC section 1, written from the SPEC's
formulas: a loop over snapshots, then over buckets. Used by the imbalance tests only."""

import math

import numpy as np
import pandas as pd


def reference_grid(books: dict, bucket: str, bands_bps=(5, 10, 25, 50, 100), levels=None, max_carry="5min"):
    """books: {instrument: Dataset (time, level)} in memory. Returns a dict of arrays
    indexed [instrument (sorted), time bucket, level|band]. An empty bucket ending more
    than ``max_carry`` after the last snapshot keeps NaN state (None: carried forever)."""
    bucket_ns = pd.Timedelta(bucket).value
    carry_ns = None if max_carry is None else pd.Timedelta(max_carry).value
    names = sorted(books)
    times = {n: books[n].time.values.astype("datetime64[ns]").astype(np.int64) for n in names}
    first = min(t.min() for t in times.values() if t.size)
    last = max(t.max() for t in times.values() if t.size)
    midnight = (first // (86_400 * 10**9)) * 86_400 * 10**9
    origin = midnight + ((first - midnight) // bucket_ns) * bucket_ns  # bucket of the first snapshot
    n_b = int((last - origin) // bucket_ns) + 1
    L = levels or books[names[0]].sizes["level"]
    B = len(bands_bps)
    out = {
        "ofi": np.zeros((len(names), n_b, L)),
        "depth_imbalance": np.full((len(names), n_b, L), np.nan),
        "mid_price": np.full((len(names), n_b), np.nan),
        "spread": np.full((len(names), n_b), np.nan),
        "microprice": np.full((len(names), n_b), np.nan),
        "band_imbalance": np.full((len(names), n_b, B), np.nan),
        "n_updates": np.zeros((len(names), n_b), dtype=np.int64),
    }
    labels = origin + (np.arange(n_b) + 1) * bucket_ns

    def div(a, b):
        """IEEE division without warnings: x/0 is +-inf, 0/0 and NaN/0 are NaN."""
        if b != 0 or np.isnan(b):
            return a / b
        return np.nan if (a == 0 or np.isnan(a)) else math.copysign(np.inf, a)

    for i, name in enumerate(names):
        ds = books[name]
        Pb = ds.bid_price.values[:, :L]
        Pa = ds.ask_price.values[:, :L]
        qb = ds.bid_size.values[:, :L]
        qa = ds.ask_size.values[:, :L]
        t = times[name]
        last_state = None
        state_at = {}
        for n in range(t.size):
            b = int((t[n] - origin) // bucket_ns)
            out["n_updates"][i, b] += 1
            if n > 0:
                for k in range(L):
                    pb, pb0 = Pb[n, k], Pb[n - 1, k]
                    pa, pa0 = Pa[n, k], Pa[n - 1, k]
                    pb = -np.inf if np.isnan(pb) else pb
                    pb0 = -np.inf if np.isnan(pb0) else pb0
                    pa = np.inf if np.isnan(pa) else pa
                    pa0 = np.inf if np.isnan(pa0) else pa0
                    e = (qb[n, k] * (pb >= pb0) - qb[n - 1, k] * (pb <= pb0)
                         - qa[n, k] * (pa <= pa0) + qa[n - 1, k] * (pa >= pa0))
                    out["ofi"][i, b, k] += e
            state_at[b] = n  # the last snapshot in bucket b
        for b in range(n_b):
            if b in state_at:
                last_state = state_at[b]
            if last_state is None:
                continue
            n = last_state
            if b not in state_at and carry_ns is not None and labels[b] - t[n] > carry_ns:
                continue  # a gap: the last snapshot is too old to stand for the book
            cb = np.cumsum(qb[n])
            ca = np.cumsum(qa[n])
            for k in range(L):
                out["depth_imbalance"][i, b, k] = div(cb[k] - ca[k], cb[k] + ca[k])
            mid = (Pb[n, 0] + Pa[n, 0]) / 2
            out["mid_price"][i, b] = mid
            out["spread"][i, b] = Pa[n, 0] - Pb[n, 0]
            out["microprice"][i, b] = div(Pb[n, 0] * qa[n, 0] + Pa[n, 0] * qb[n, 0], qa[n, 0] + qb[n, 0])
            for j, bps in enumerate(bands_bps):
                low, high = mid * (1 - bps / 1e4), mid * (1 + bps / 1e4)
                bsum = sum(qb[n, k] for k in range(L) if Pb[n, k] >= low)
                asum = sum(qa[n, k] for k in range(L) if Pa[n, k] <= high)
                out["band_imbalance"][i, b, j] = div(bsum - asum, bsum + asum)
    return out, labels.astype("datetime64[ns]"), names
