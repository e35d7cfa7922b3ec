"""Imbalance grids computed straight from a book day's chunk files, on this process's threads.

The lazy path (``imbalance_grid`` on a Dask-backed book) builds a graph of read, cut and
kernel tasks and runs it on a scheduler; on one machine its graph, its scheduling and
the fresh memory every task's output needs cost about twenty kernels. Here each stored
chunk is one task on a thread pool: its four arrays are read and checked, decompressed
into buffers the thread reuses or, uncompressed, mapped from their files (``stores.ticked``),
and the kernel runs on their int32 ticks at once, decoding them as it reads them
(``imbalance_ticks_block_cpu``; a grid of fewer levels than stored decodes them first),
for every bucket that lies wholly inside the chunk. Each chunk's first and last buckets may
continue in a neighbouring chunk: their rows are copied out (a few rows per chunk) and
summed afterwards, each such bucket by one kernel call over all its rows in time order.
As every bucket is summed by one call, in time order, with its true predecessor row, the
grid is the one the lazy path computes, to the bit (tested on stores chunked in many ways).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .coding import TICK_FILL
from .imbalance import BOOK_ARRAYS, _empty_buckets, _kernel_call
from .kernels.imbalance import bucket_of_cpu, imbalance_ticks_block_cpu, ticks_scale_args
from .kernels.ticks import from_ticks_cpu
from .stores.ticked import CHUNKS_ENCODING, TickedChunks
from .timing import in_context, timed_kernel, timed_task


def stored_sources(ds) -> list[TickedChunks] | None:
    """The chunk files of a book day's four arrays, where ``ds`` (one day, as opened from
    the store, no row left out) holds them all in the book's own chunk format; else None."""
    found = [ds[name].variable.encoding.get(CHUNKS_ENCODING) if name in ds else None for name in BOOK_ARRAYS]
    sources = [f for f in found if isinstance(f, TickedChunks)]
    if len(sources) != 4 or any(str(n).startswith("qc_") for n in ds.variables):
        return None
    first = sources[0]
    same = all(f.rows == first.rows and f.chunk_rows == first.chunk_rows and f.levels == first.levels
               for f in sources)
    return sources if same and first.rows == ds.sizes["time"] else None


class _Buffers(threading.local):
    """One thread's buffers, reused from chunk to chunk (fresh ones would be page-faulted in
    every time): the int32 ticks of one chunk (one per array where the kernel reads the
    ticks; Blosc decompresses into them) and, where it does not, float64 rows of the four
    arrays."""

    key: tuple | None = None

    def get(self, chunk_rows: int, stored_levels: int, levels: int, fused: bool
            ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        key = (chunk_rows, stored_levels, levels, fused)
        if self.key != key:
            self.key = None  # the old buffers go before the new ones are made
            self.ticks = [np.empty(chunk_rows * stored_levels, dtype=np.int32) for _ in range(4 if fused else 1)]
            self.values = [] if fused else [np.empty((chunk_rows, levels)) for _ in range(4)]
            self.buckets = np.empty(chunk_rows, dtype=np.int64)
            self.key = key
        return self.ticks, self.values, self.buckets


def _missing_chunk(rows: int, levels: int) -> np.ndarray:
    """A chunk whose file is missing, as zarr reads it: every value the fill value."""
    return np.full((rows, levels), TICK_FILL, dtype=np.int32)


_ticks_kernel = timed_kernel("imbalance_block", imbalance_ticks_block_cpu)


_buffers = _Buffers()
_pool: tuple[ThreadPoolExecutor, int] | None = None  # the pool and its threads
_pool_lock = threading.Lock()


def chunk_pool(threads: int) -> ThreadPoolExecutor:
    """The threads that read chunks and run the kernel, kept from day to day (with their
    buffers: about 40 MB per thread for chunks of 262,144 rows x 10 levels)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[1] != threads:
            if _pool is not None:
                _pool[0].shutdown(wait=False)
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="gpu_risk-chunks"), threads
        return _pool[0]


class _Segment:
    """Rows [a, b) of the instrument (global numbering, the lead-in row first), from one
    chunk (or the lead-in). ``head_end``: the first row after the segment's first bucket;
    ``tail_start``: the first row of its last bucket; a segment of one bucket is whole."""

    def __init__(self, a: int, b: int, buckets: _Buckets):
        self.a, self.b = a, b
        first, last = buckets.at(a), buckets.at(b - 1)
        self.whole = first == last
        self.head_end = a + buckets.rows_before(a, b, first + 1)
        self.tail_start = a + buckets.rows_before(a, b, last)


class _Buckets:
    """The bucket of each row of one instrument (``max((t - origin) // bucket, 0)``, as
    ``bucket_of_cpu`` computes them), worked out where needed: a chunk's in its own task,
    on all cores, rather than the whole day's up front on one. Rows are numbered with the
    lead-in row (time ``lead_ns``, when given) first, then the day's rows (``t``): the
    lead-in row is kept apart (putting it in front of ``t`` copies the day's times)."""

    def __init__(self, t: np.ndarray, lead_ns: int | None, origin_ns: int, bucket_ns: int):
        self.t, self.origin_ns, self.bucket_ns = t, origin_ns, bucket_ns
        self.lead_ns, self.n_lead = lead_ns, 0 if lead_ns is None else 1

    def times(self, a: int, b: int) -> np.ndarray:
        """The times of rows [a, b): a view of the day's, unless the lead-in row is among them."""
        if a >= self.n_lead:
            return self.t[a - self.n_lead:b - self.n_lead]
        return np.concatenate([np.array([self.lead_ns], dtype=np.int64), self.t[:max(b - 1, 0)]])[:b - a]

    def at(self, i: int) -> int:
        time = self.lead_ns if i < self.n_lead and self.lead_ns is not None else int(self.t[i - self.n_lead])
        return max(int(time - self.origin_ns) // self.bucket_ns, 0)

    def rows_before(self, a: int, b: int, k: int) -> int:
        """How many of rows [a, b) (sorted) lie in buckets before bucket ``k``."""
        if k <= 0:
            return 0
        return int(np.searchsorted(self.times(a, b), self.origin_ns + k * self.bucket_ns, side="left"))

    def counted_from(self, a: int, b: int, base: int, out: np.ndarray | None = None) -> np.ndarray:
        """The buckets of rows [a, b) less ``base`` (each row's in bucket ``base`` or later,
        or a lead-in row with ``base`` 0), into ``out`` when given."""
        out = np.empty(b - a, dtype=np.int64) if out is None else out[:b - a]
        return bucket_of_cpu(self.times(a, b), self.origin_ns + base * self.bucket_ns, self.bucket_ns, out)


def grid_from_chunks(t: np.ndarray, lead: tuple[int, Sequence[np.ndarray]] | None,
                     sources: Sequence[TickedChunks], levels: int, origin_ns: int, bucket_ns: int, n_buckets: int,
                     bands: np.ndarray, dest: np.ndarray, pool: ThreadPoolExecutor):
    """Fill ``dest`` ((n_buckets, columns)) with one instrument's grid. ``t``: the int64 ns
    times of the day's rows (all at or after the origin); ``lead``: the lead-in row, a
    snapshot before the origin (carried and the first row's predecessor, not counted), as
    its time and its four arrays ((1, levels) each), or None; ``sources``: the four book
    arrays' chunks (bid_price, ask_price, bid_size, ask_size). Returns a function that
    finishes the grid once the chunk tasks submitted to ``pool`` are done (the buckets
    that span chunks), so that several instruments' chunks share the pool."""
    n_lead = 0 if lead is None else 1
    buckets = _Buckets(t, None if lead is None else lead[0], origin_ns, bucket_ns)
    n_rows = n_lead + t.size
    sizes = sources[0].chunk_sizes()
    if any(s.chunk_sizes() != sizes for s in sources) or sum(sizes) != t.size:
        raise ValueError("the book arrays' chunks do not match its time axis")
    edges = np.cumsum([0, n_lead, *sizes])
    segments = [_Segment(int(a), int(b), buckets) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    first_bucket = buckets.at(0)
    if first_bucket > 0:  # before the instrument's first snapshot
        dest[:first_bucket] = _empty_buckets(first_bucket, levels, dest.shape[1], dest, lazy=False)
    stored_levels = sources[0].levels

    scales = np.array([[s.divisor, s.multiplier] for s in sources])
    size_scales = ticks_scale_args(scales)
    fused = levels == stored_levels  # the kernel reads the ticks themselves

    def kept(rows: np.ndarray, j: int) -> np.ndarray:
        """A copy of some rows of array ``j`` read from a chunk, as float64 (decoded where
        they are ticks): the buffers they lie in are reused by the next chunk."""
        if not fused:
            return rows.copy()
        return from_ticks_cpu(rows, sources[j].divisor, sources[j].multiplier, np.empty(rows.shape))

    def chunk_task(c: int, seg: _Segment):
        """Read chunk ``c``, sum its inner buckets into ``dest``; return copies of the rows
        the spanning buckets need (float64): (head, tail, row before the tail), or the whole
        chunk."""
        scratch, values, bucket_rows = _buffers.get(sources[0].chunk_rows, stored_levels, levels, fused)
        with timed_task("read"):
            arrays: list[np.ndarray]
            if fused:  # int32 ticks, decoded by the kernel as it reads them
                found = [src.ticks(c, buf) for src, buf in zip(sources, scratch)]
                arrays = [_missing_chunk(seg.b - seg.a, levels) if a is None else a for a in found]
            else:
                arrays = [src.read(c, out=v, ticks=scratch[0], levels=levels) for src, v in zip(sources, values)]
        with timed_task("other"):  # the clock takes the kernel's own time out of "other"
            if seg.whole:
                return [kept(a, j) for j, a in enumerate(arrays)], None, None
            lo, hi = seg.head_end - seg.a, seg.tail_start - seg.a
            if lo < hi:
                b0, b1 = buckets.at(seg.head_end), buckets.at(seg.tail_start)
                inner = [a[lo:hi] for a in arrays]
                before = [a[lo - 1] for a in arrays]
                bucket = buckets.counted_from(seg.head_end, seg.tail_start, b0, bucket_rows)
                if fused:
                    _ticks_kernel(*inner, *before, True, bucket, bands, scales, *size_scales, dest[b0:b1])
                else:
                    _kernel_call(np, inner, before, bucket, bands, levels, dest[b0:b1])
            return ([kept(a[:lo], j) for j, a in enumerate(arrays)],
                    [kept(a[hi:], j) for j, a in enumerate(arrays)],
                    [kept(a[hi - 1], j) for j, a in enumerate(arrays)])

    task = in_context(chunk_task)  # its time counts in the caller's stage
    futures = [pool.submit(task, i, seg) for i, seg in enumerate(segments[n_lead:])]

    def finish() -> None:
        done = [f.result() for f in futures]
        with timed_task("other"):
            parts = ([(list(lead[1]), None, None)] if lead is not None else []) + done
            group: list[list[np.ndarray]] = []
            first_row, prev = 0, None

            def close(stop_row: int, stop_bucket: int) -> None:
                b0 = buckets.at(first_row)
                arrays = [np.concatenate([piece[j] for piece in group]) for j in range(4)]
                _kernel_call(np, arrays, prev, buckets.counted_from(first_row, stop_row, b0), bands, levels,
                             dest[b0:stop_bucket])

            for seg, (head, tail, before_tail) in zip(segments, parts):
                group.append(head)
                if seg.whole:  # one bucket: the group runs on through it
                    continue
                close(seg.head_end, buckets.at(seg.head_end))
                group, first_row, prev = [tail], seg.tail_start, before_tail
            close(n_rows, n_buckets)
            if lead is not None:  # the lead-in row is carried, not an update of this grid
                dest[0, -1] -= 1

    return finish
