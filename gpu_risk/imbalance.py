"""Imbalance grids over book stores of any size (SPEC section 1), lazily on Dask.

Each instrument's time axis is cut into blocks whose boundaries fall on bucket boundaries
(a bucket is summed by one kernel call, in time order), and each block gets the snapshot
before it as its OFI predecessor, across chunk and day boundaries. Blocks are read from the
input chunks as they are: a block is its chunk from its first whole bucket on, plus the
rows of its last bucket that run into the next chunk(s); only those rows are copied. A block owns
the buckets from its first snapshot's bucket up to the next block's first bucket, so empty
buckets are carried forward inside the kernel. Results therefore do not depend on the
chunking of the input, the scheduler or the backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from .backend import dispatch, in_memory_dask, is_cupy
from .kernels.imbalance import (
    bucket_of_cpu,
    imbalance_block_cpu,
    imbalance_block_gpu,
    n_columns,
    stale_buckets_cpu,
)
from .validate import ensure_book, without_flagged_rows

_kernel = dispatch(imbalance_block_cpu, imbalance_block_gpu)
BOOK_ARRAYS = ("bid_price", "ask_price", "bid_size", "ask_size")
DAY_NS = 86_400 * 10**9
IN_MEMORY_ROWS = 262_144


def _bucket_ns(bucket) -> int:
    ns = pd.Timedelta(bucket).value
    if ns <= 0:
        raise ValueError(f"bucket must be a positive duration, not {bucket!r}")
    return ns


def _block_bounds(bucket_index: np.ndarray, chunk_starts: Iterable[int]) -> list[int]:
    """Chunk starts moved forward onto bucket boundaries (first row of a new bucket)."""
    n = bucket_index.size
    starts = [0]
    for s in chunk_starts:
        if s <= starts[-1]:
            continue
        if s < n:  # the first row at or after s that opens a new bucket
            s = int(np.searchsorted(bucket_index, bucket_index[s - 1], side="right"))
        if starts[-1] < s < n:
            starts.append(s)
    return starts + [n]


def _run_block(parts, prev_row, runs, bands, n_out, levels, lead_in=False, split=None, dest=None):
    """The grid rows of one block of whole buckets.

    ``parts``: for each of the 4 book arrays, the block's rows as a list of consecutive
    pieces (the Dask chunks it overlaps, cut to the block); ``prev_row``: the 4 rows
    before the block (None at the instrument's first row); ``runs``: run-length encoded
    bucket of each row, relative to the block's first bucket. ``split`` = (row, bucket):
    the first row of the block's last bucket, when that bucket continues past the first
    piece. The buckets before it are computed on the first piece as it is (no copy); only
    the last bucket's rows are joined. Every bucket is still summed by one kernel call, in
    time order, so the result does not depend on where the chunks end. ``dest``: write the
    rows there (a C-contiguous (n_out, columns) view of the whole grid) instead of a new array.
    """
    first = parts[0][0]
    xp = np
    if is_cupy(first):
        import cupy as xp  # noqa: PLC0415
    # run-length pairs (a lazy graph's small argument) or, in memory, the buckets themselves
    bucket = np.repeat(*runs) if isinstance(runs, tuple) else runs
    n_cols = n_columns(levels, bands.size)

    def call(arrays, prev, bucket, n, out):
        _kernel_call(xp, arrays, prev, bucket, bands, levels, out)

    out = xp.empty((n_out, n_cols), dtype=np.float64) if dest is None else dest
    if split is None or split[0] == 0:
        arrays = [piece[0] if len(piece) == 1 else xp.concatenate(piece) for piece in parts]
        call(arrays, prev_row, bucket, n_out, out)
    else:
        row, b_last = split
        call([piece[0][:row] for piece in parts], prev_row, bucket[:row], b_last, out[:b_last])
        tail_arrays = [xp.concatenate([piece[0][row:], *piece[1:]]) for piece in parts]
        call(tail_arrays, [piece[0][row - 1] for piece in parts], bucket[row:] - b_last,
             n_out - b_last, out[b_last:])
    if lead_in:  # the predecessor row from before `start` is not an update of this grid
        out[0, -1] -= 1
    return out


def _kernel_call(xp, arrays, prev, bucket, bands, levels, out):
    """The kernel over consecutive whole buckets: ``arrays`` (4 x (n, levels)), ``prev``
    (the 4 rows before them, or None), ``bucket`` (n,) counted from ``out``'s first row."""
    has_prev = prev is not None
    if not has_prev:
        prev = [xp.full(levels, np.nan) for _ in range(4)]
    if xp is np:
        arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in arrays]
        prev = [np.ascontiguousarray(p, dtype=np.float64) for p in prev]
        return _kernel(*arrays, *prev, has_prev, bucket, bands, out)
    return _kernel(*arrays, *prev, has_prev, xp.asarray(bucket), xp.asarray(bands), out)


def _rows(block, start, stop):
    return block[start:stop]


def _row(block, i):
    return block[i]


def _instrument_grid(ds: xr.Dataset, origin_ns: int, bucket_ns: int, n_buckets: int,
                     bands: np.ndarray, levels: int, dest=None) -> da.Array:
    """(n_buckets, n_columns) packed grid of one instrument: lazily (Dask) where the book
    is lazy, else computed at once (into ``dest`` when given: no copies of the result)."""
    n_cols = n_columns(levels, bands.size)
    ds, t, lead_in = _grid_rows(ds, origin_ns)
    arrays = [ds[name].isel(level=slice(0, levels)).data for name in BOOK_ARRAYS]
    like = arrays[0]
    lazy = isinstance(like, da.Array)
    meta = like._meta if lazy else like[:0]  # never the data itself: Dask would hash it
    if t.size == 0:
        return _fill(dest, _empty_buckets(n_buckets, levels, n_cols, meta, lazy))
    bucket_index = bucket_of_cpu(t, origin_ns, bucket_ns, np.empty(t.size, dtype=np.int64))
    if lazy:
        time_chunks = arrays[0].chunks[0]
        arrays = [a.rechunk((time_chunks, -1)) for a in arrays]  # one time chunking for all four, whole rows
        chunk_edges = np.cumsum((0,) + arrays[0].chunks[0])
        # blocks of whole buckets over the original chunks: no rechunking (which copied every
        # chunk to move a few rows across its edges); a task reads the pieces it overlaps
        blocks = [a.to_delayed().ravel() for a in arrays]
        # explicit task names, from the input arrays' names: delayed(pure=True) would hash
        # the arguments (run lengths, bands) with SHA-1 for every task
        base = dask.base.tokenize(*(a.name for a in arrays), origin_ns, bucket_ns, n_buckets,
                                  bands.tobytes(), levels)

        def cut(chunk, lo, hi):
            return dask.delayed(_rows)(chunk, lo, hi, dask_key_name=f"imbalance-rows-{base}-{chunk.key}-{lo}-{hi}")

        def row_of(chunk, i):
            return dask.delayed(_row)(chunk, i, dask_key_name=f"imbalance-row-{base}-{chunk.key}-{i}")

        def run(i, n_out, *args, b0=0):
            task = dask.delayed(_run_block)(*args, dask_key_name=f"imbalance-block-{base}-{i}")
            return da.from_delayed(task, shape=(n_out, n_cols), dtype=np.float64, meta=meta,
                                   name=f"{task.key}-grid")
    else:
        # in memory: no graph at all (building and hashing one cost more than the kernel);
        # the same blocks, over views of IN_MEMORY_ROWS rows, on a pool of threads
        n = t.size
        chunk_edges = np.array(list(range(0, n, IN_MEMORY_ROWS)) + [n])
        blocks = [[a[lo:hi] for lo, hi in zip(chunk_edges[:-1], chunk_edges[1:])] for a in arrays]
        cut, row_of = _rows, _row
        pool = ThreadPoolExecutor(1 if is_cupy(meta) else _threads())

        def run(i, n_out, *args, b0=0):
            return pool.submit(_run_block, *args, dest=None if dest is None else dest[b0:b0 + n_out])

    bounds = _block_bounds(bucket_index, chunk_edges[:-1])

    def pieces_of(start, stop):
        """Per array, the pieces covering rows [start, stop), in order."""
        first_chunk = int(np.searchsorted(chunk_edges, start, side="right")) - 1
        last_chunk = int(np.searchsorted(chunk_edges, stop, side="left")) - 1
        out = []
        for blk in blocks:
            per = []
            for c in range(first_chunk, last_chunk + 1):
                edge, size = chunk_edges[c], chunk_edges[c + 1] - chunk_edges[c]
                lo, hi = max(start, edge) - edge, min(stop, edge + size) - edge
                whole = lo == 0 and hi == size
                per.append(blk[c] if whole else cut(blk[c], lo, hi))
            out.append(per)
        return out, first_chunk

    pieces = []
    first_bucket = int(bucket_index[0])
    if first_bucket > 0:  # before the instrument's first snapshot
        pad = _empty_buckets(first_bucket, levels, n_cols, meta, lazy)
        pieces.append(pad if lazy or dest is None else _fill(dest[:first_bucket], pad))
    for i in range(len(bounds) - 1):
        start, stop = bounds[i], bounds[i + 1]
        b0 = int(bucket_index[start])
        b1 = int(bucket_index[stop]) if stop < t.size else n_buckets
        rel = bucket_index[start:stop] - b0
        if lazy:  # run-length encoded (bucket, count) pairs keep the graph small: one pair per bucket
            change = np.flatnonzero(np.diff(rel)) + 1
            runs = (rel[np.concatenate([[0], change])].astype(np.int64),
                    np.diff(np.concatenate([[0], change, [rel.size]])).astype(np.int64))
        else:
            runs = rel
        parts, first_chunk = pieces_of(start, stop)
        split = None
        if len(parts[0]) > 1:  # the last bucket runs on past the first chunk's end
            first_end = min(stop, chunk_edges[first_chunk + 1]) - start
            row = int(np.searchsorted(rel, rel[first_end - 1], side="left"))
            split = (row, int(rel[row]))
        prev = None
        if start > 0:  # the row before the block: the OFI predecessor of its first row
            c = int(np.searchsorted(chunk_edges, start - 1, side="right")) - 1
            prev = [row_of(blk[c], start - 1 - chunk_edges[c]) for blk in blocks]
        pieces.append(run(i, b1 - b0, parts, prev, runs, bands, b1 - b0, levels, lead_in and i == 0,
                          split, b0=b0))
    if lazy:
        return da.concatenate(pieces, axis=0)
    pool.shutdown(wait=True)
    done = [p.result() if isinstance(p, Future) else p for p in pieces]
    if dest is not None:
        return dest
    xp = _array_module(meta)
    return done[0] if len(done) == 1 else xp.concatenate(done, axis=0)


def _grid_rows(ds: xr.Dataset, origin_ns: int) -> tuple[xr.Dataset, np.ndarray, bool]:
    """The rows an instrument's grid uses, their times in ns, and whether the first is a
    lead-in: flagged rows are left out, and of the snapshots before the origin (``start``)
    only the last is kept, in the first bucket, as the OFI predecessor and the state
    carried into the first buckets; it is not counted."""
    ds = without_flagged_rows(ds)
    t = _time_ns(ds)
    lead_in = bool(t.size and t[0] < origin_ns)
    if lead_in:
        keep = int(np.searchsorted(t, origin_ns, side="left")) - 1
        ds, t = ds.isel(time=slice(keep, None)), t[keep:]
    return ds, t, lead_in


def _fill(dest, values):
    if dest is None:
        return values
    dest[...] = values
    return dest


def _time_ns(ds: xr.Dataset) -> np.ndarray:
    """The time axis as int64 nanoseconds, without a copy where it already is datetime64[ns]."""
    t = np.asarray(ds["time"].values)
    if t.dtype != np.dtype("datetime64[ns]"):
        t = t.astype("datetime64[ns]")
    return t.view(np.int64)


def _threads() -> int:
    from .cluster import _local_workers  # noqa: PLC0415

    return _local_workers()


def _array_module(meta):
    if is_cupy(meta):
        import cupy  # noqa: PLC0415

        return cupy
    return np


def _to_cupy(x):
    import cupy  # noqa: PLC0415

    return cupy.asarray(x)


def _empty_buckets(n: int, levels: int, n_cols: int, meta, lazy: bool = True):
    """Buckets before an instrument's first snapshot: NaN state, OFI 0, no updates."""
    pad = np.full((n, n_cols), np.nan)
    pad[:, :levels] = 0.0
    pad[:, -1] = 0.0
    if not lazy:
        return _array_module(meta).asarray(pad)
    arr = da.from_array(pad, chunks=(max(n, 1), n_cols))
    return arr.map_blocks(_to_cupy, dtype=np.float64, meta=meta) if is_cupy(meta) else arr


def _stale_buckets(t: np.ndarray, origin_ns: int, bucket_ns: int, n_buckets: int, max_carry_ns: int,
                   lead_ns: int | None = None) -> np.ndarray:
    """Empty buckets whose end is more than ``max_carry_ns`` after the last snapshot before
    them (SPEC section 1: a gap in the data is never shown as a current book). ``t``: the
    instrument's snapshot times used by the grid (a lead-in snapshot before the origin
    included, or its time given apart as ``lead_ns``: it is carried, not counted)."""
    carried = np.iinfo(np.int64).min if lead_ns is None else lead_ns
    return stale_buckets_cpu(t, origin_ns, bucket_ns, max_carry_ns, carried, np.empty(n_buckets, dtype=np.bool_))


def _without(data, stale: np.ndarray, name: str):
    """``data`` (instrument, time[, k]) with NaN where ``stale`` (instrument, time)."""
    cond = stale if data.ndim == 2 else stale[:, :, None]
    if isinstance(data, da.Array):
        chunks = data.chunks[:2] + (((1,),) if data.ndim == 3 else ())
        mask = da.from_array(cond, chunks=chunks, name=f"stale-{name}-{dask.base.tokenize(cond.tobytes())}")
        if is_cupy(data._meta):
            mask = mask.map_blocks(_to_cupy, dtype=bool, meta=data._meta.astype(bool))
        return da.where(mask, np.nan, data)
    xp = _array_module(data)
    return xp.where(xp.asarray(cond), np.nan, data)


def imbalance_grid(book: xr.DataTree | xr.Dataset, bucket="1s", levels: int | None = None,
                   bands_bps: Sequence[float] = (5, 10, 25, 50, 100),
                   instruments: Iterable[str] | None = None, start=None, end=None,
                   validate: bool = True, max_carry="5min") -> xr.Dataset:
    """Order-book imbalance grids per instrument x time bucket x depth (SPEC section 1).

    Parameters
    ----------
    book : DataTree with one node per instrument (``open_book``) or one instrument's
        Dataset (its ``instrument`` attribute, or "book", names it). NumPy-, Dask- or
        CuPy-backed; rows flagged ``qc_row_excluded`` are left out.
    bucket : bucket length (pandas Timedelta string or value), aligned to midnight UTC of
        the first snapshot's day; a bucket labelled T holds T - bucket <= t < T.
    levels : use the book's first ``levels`` levels (default: all).
    bands_bps : half-widths of the bands around the mid, in basis points.
    start : optional time; the grid then covers only buckets ending after ``start``, and
        snapshots before it serve only as the OFI predecessor and carried state of the
        first buckets (pass the previous day's last snapshot to grid one day exactly as
        the whole history would).
    end : optional time; the grid then runs to the bucket ending at ``end`` (carrying
        the state forward) and leaves out snapshots at or after it. With ``start`` and
        ``end`` at consecutive midnights, day grids tile the history's grid exactly.
    max_carry : how long an empty bucket carries the last snapshot's state (pandas
        Timedelta; default 5 minutes, SPEC section 1): an empty bucket ending more than
        ``max_carry`` after the last snapshot has NaN state (``depth_imbalance``,
        ``mid_price``, ``spread``, ``microprice``, ``band_imbalance``), 0 ``ofi`` and 0
        ``n_updates``, so a gap in the data never looks like a current book. None carries
        it forever.
    validate : check the SPEC's bad-input rules on a book that has not been validated yet
        (``open_book`` and ``validate_book_dataset`` stamp what they checked); an
        :class:`~gpu_risk.errors.InputError` names the first bad snapshot.

    Returns a Dataset with dims (instrument, time, level) and (instrument, time, band):
    ``ofi`` and ``depth_imbalance`` [base units; 1], ``mid_price``, ``spread``,
    ``microprice`` [quote currency], ``band_imbalance`` [1], ``n_updates`` [1]. Lazy
    (Dask) where the input is lazy.
    """
    return _imbalance_grid(book, bucket, levels, bands_bps, instruments, start, end, validate, max_carry)


def _imbalance_grid(book, bucket, levels, bands_bps, instruments, start, end, validate, max_carry,
                    stored: dict | None = None) -> xr.Dataset:
    """:func:`imbalance_grid`; ``stored`` (instrument -> (its four arrays' TickedChunks,
    its lead-in row: (its time in ns, its four (1, L) arrays) or None)) for every
    instrument: computed now from the chunk files on this process's threads
    (``imbalance_stored``), not as a graph. The book's datasets then hold the day's rows
    alone (the lead-in row is not concatenated to them: that copies the day's time axis)."""
    if isinstance(book, xr.Dataset):
        book = xr.DataTree.from_dict({f"/{book.attrs.get('instrument', 'book')}": book})
    names = sorted(instruments if instruments is not None else book.children)
    if not names:
        raise ValueError("the book has no instrument")
    datasets = {name: book[name].to_dataset() for name in names}
    if validate:  # a no-op for books validated before (stamped or flagged)
        datasets = {name: ensure_book(ds, instrument=name) for name, ds in datasets.items()}
    book_levels = {ds.sizes["level"] for ds in datasets.values()}
    max_levels = min(book_levels)
    levels = max_levels if levels is None else int(levels)
    if not 1 <= levels <= max_levels:
        raise ValueError(f"levels must be in [1, {max_levels}], not {levels}")
    bucket_ns = _bucket_ns(bucket)
    max_carry_ns = None if max_carry is None else pd.Timedelta(max_carry).value
    if max_carry_ns is not None and max_carry_ns < 0:
        raise ValueError(f"max_carry must be a non-negative duration, not {max_carry!r}")
    bands = np.asarray(bands_bps, dtype=np.float64)
    if bands.ndim != 1 or (bands < 0).any() or not np.isfinite(bands).all():
        raise ValueError("bands_bps must be non-negative finite numbers")
    times = {name: _time_ns(ds) for name, ds in datasets.items()}
    # stored days: each instrument's lead-in row's time, kept beside its day's times
    leads: dict[str, int | None] = {
        name: None if stored[name][1] is None else int(stored[name][1][0]) for name in times} if (
        stored is not None) else {}
    firsts: list[int] = []
    lasts: list[int] = []
    for name, t in times.items():
        lead_ns = leads.get(name)
        if lead_ns is not None:
            firsts.append(lead_ns)
            lasts.append(lead_ns)
        if t.size:  # sorted (validated)
            firsts.append(int(t[0]))
            lasts.append(int(t[-1]))
    if not firsts:
        raise ValueError("the book has no snapshot")
    if start is not None:
        start_ns = pd.Timestamp(start).value
        firsts = [max(min(firsts), start_ns)]
        lasts = [max(max(lasts), start_ns)]
    if end is not None:
        end_ns = pd.Timestamp(end).value
        if end_ns <= min(firsts):
            raise ValueError(f"end {end} is not after the grid's first snapshot or start")
        lasts = [end_ns - 1]
        kept = {name: int(np.searchsorted(t, end_ns, side="left")) for name, t in times.items()}
        if stored is not None and any(kept[name] < t.size for name, t in times.items()):
            raise ValueError("a stored day holds snapshots at or after its end")
        datasets = {name: ds.isel(time=slice(0, kept[name])) for name, ds in datasets.items()}
        times = {name: t[:kept[name]] for name, t in times.items()}
    midnight = (min(firsts) // DAY_NS) * DAY_NS  # buckets are aligned to midnight UTC
    # the axis starts at the bucket holding the first snapshot (all instruments together)
    origin_ns = midnight + ((min(firsts) - midnight) // bucket_ns) * bucket_ns
    n_buckets = int((max(lasts) - origin_ns) // bucket_ns) + 1
    lazy = stored is None and any(isinstance(ds["bid_price"].data, da.Array) for ds in datasets.values())
    # the stale buckets (a pass over every instrument's times) on a thread of their own,
    # beside the grids (the kernel releases the GIL)
    stale_pool = ThreadPoolExecutor(1, thread_name_prefix="gpu_risk-stale")

    def stale_of(name: str) -> np.ndarray:
        assert max_carry_ns is not None  # called only then
        if stored is not None:  # the day's rows, with the lead-in row's time carried into them
            return _stale_buckets(times[name], origin_ns, bucket_ns, n_buckets, max_carry_ns, leads[name])
        return _stale_buckets(_grid_rows(datasets[name], origin_ns)[1], origin_ns, bucket_ns, n_buckets,
                              max_carry_ns)

    stale_flags = None if max_carry_ns is None else stale_pool.submit(
        lambda: np.stack([stale_of(name) for name in datasets]))
    stale_pool.shutdown(wait=False)
    if stored is not None:
        from .imbalance_stored import chunk_pool, grid_from_chunks  # noqa: PLC0415  (they build on this module)

        packed = np.empty((len(datasets), n_buckets, n_columns(levels, bands.size)))
        pool = chunk_pool(_threads())
        finishes = []
        for i, name in enumerate(datasets):
            sources, lead = stored[name]
            t = times[name]
            if t.size and t[0] < origin_ns:
                raise ValueError("a stored day's rows must all lie within its grid (its lead-in row beside it)")
            if lead is not None:
                if lead[0] >= origin_ns:
                    raise ValueError("a stored day's lead-in row must lie before its grid")
                lead = (lead[0], [np.ascontiguousarray(a[:, :levels], dtype=np.float64) for a in lead[1]])
            finishes.append(grid_from_chunks(t, lead, sources, levels, origin_ns, bucket_ns, n_buckets,
                                             bands, packed[i], pool))
        for finish in finishes:
            finish()
    elif lazy:  # an instrument in memory beside lazy ones joins them as one chunk
        grids = [_instrument_grid(ds, origin_ns, bucket_ns, n_buckets, bands, levels)
                 for ds in datasets.values()]
        grids = [g if isinstance(g, da.Array) else in_memory_dask(g) for g in grids]
        packed = da.stack(grids, axis=0)  # (instrument, time, column)
    else:  # in memory: every block writes its rows into the one result array
        first = next(iter(datasets.values()))["bid_price"].data
        packed = _array_module(first).empty((len(datasets), n_buckets, n_columns(levels, bands.size)))
        for i, ds in enumerate(datasets.values()):
            _instrument_grid(ds, origin_ns, bucket_ns, n_buckets, bands, levels, dest=packed[i])
    stale = None if stale_flags is None else stale_flags.result()
    stale = stale if stale is not None and stale.any() else None
    labels = (origin_ns + (np.arange(n_buckets, dtype=np.int64) + 1) * bucket_ns).astype("datetime64[ns]")
    # sizes are in each instrument's own units (base units; USD contracts for inverse
    # perpetuals; shares): OFI has them, named per instrument
    size_units = np.array([str(datasets[n].attrs.get("size_units", "base units")) for n in names], dtype=str)
    coords = {"instrument": np.array(names, dtype=str), "time": labels,
              "level": np.arange(1, levels + 1), "band": bands,
              "size_units": ("instrument", size_units, {"long_name": "unit of the book sizes (and of ofi)"})}
    L, B = levels, bands.size

    def var(columns, dims, units, long_name, state=True):
        data = packed[:, :, columns]
        if state and stale is not None:
            data = _without(data, stale, f"{columns}")
        return xr.DataArray(data, dims=dims, attrs={"units": units, "long_name": long_name})

    it, itl, itb = ("instrument", "time"), ("instrument", "time", "level"), ("instrument", "time", "band")
    out = xr.Dataset(
        {
            "ofi": var(slice(0, L), itl, "see size_units", "order-flow imbalance summed over the bucket (in the "
                       "instrument's size units, coordinate size_units)", state=False),
            "depth_imbalance": var(slice(L, 2 * L), itl, "1",
                                   "(bid - ask)/(bid + ask) depth over levels 1..k at the bucket's last snapshot"),
            "mid_price": var(2 * L, it, "quote currency", "mid price at the bucket's last snapshot"),
            "spread": var(2 * L + 1, it, "quote currency", "best ask - best bid at the bucket's last snapshot"),
            "microprice": var(2 * L + 2, it, "quote currency",
                              "size-weighted mid (Pb1 qa1 + Pa1 qb1)/(qa1 + qb1) at the bucket's last snapshot"),
            "band_imbalance": var(slice(2 * L + 3, 2 * L + 3 + B), itb, "1",
                                  "(bid - ask)/(bid + ask) depth within the band around the mid"),
            "n_updates": var(2 * L + 3 + B, it, "1", "snapshots in the bucket", state=False).astype(np.int64)
                         .assign_attrs(units="1", long_name="snapshots in the bucket"),
        },
        coords=coords,
    )
    out["time"].attrs["long_name"] = "end of the time bucket (UTC)"
    out["band"].attrs.update(units="bps", long_name="half-width of the band around the mid")
    out["level"].attrs.update(long_name="book level (1 = best); depth_imbalance sums levels 1..k")
    # durations as ISO 8601 (PT10S), which pandas, xarray and most tools read back
    out.attrs.update(bucket=pd.Timedelta(bucket_ns).isoformat(), bucket_alignment="midnight UTC",
                     max_carry=pd.Timedelta(max_carry_ns).isoformat() if max_carry_ns is not None else "none")
    if start is not None:
        out = out.sel(time=slice(np.datetime64(start_ns + 1, "ns"), None))
    return out if lazy else out.compute()
