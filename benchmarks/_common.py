"""Shared by the benchmarks: the machine's own memory read bandwidth, and timing."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _sum_rows(a):
    total = 0.0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            total += a[i, j]
    return total


@numba.njit(nogil=True, cache=True, fastmath=True)
def _sum_fast(a):
    # fastmath lets LLVM vectorise the reduction: the read bandwidth a streaming loop can reach
    total = 0.0
    for i in range(a.size):
        total += a[i]
    return total


def best_of(fn, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def read_bandwidth(nbytes: int = 1 << 29, threads: int = 1) -> float:
    """Bytes/s one thread (or ``threads`` threads on separate slices) reads from memory,
    measured now with a vectorised numba sum over an array much larger than the caches."""
    from concurrent.futures import ThreadPoolExecutor

    a = np.random.default_rng(0).random(nbytes // 8)
    parts = np.array_split(a, threads)
    _sum_fast(parts[0][:10])
    if threads == 1:
        seconds = best_of(lambda: _sum_fast(a))
    else:
        with ThreadPoolExecutor(threads) as pool:
            seconds = best_of(lambda: list(pool.map(_sum_fast, parts)))
    return a.nbytes / seconds


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()}, {cores} cores, Python {platform.python_version()}, numba {numba.__version__}"


@contextlib.contextmanager
def synthetic_as_of_date(accounts: int, prefix: str):
    """(market, positions) of one synthetic as-of date (4 perpetuals, 4 options), in a
    temporary directory removed afterwards."""
    from gpu_risk import store
    from gpu_risk.synth import SynthConfig, synth

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        data = synth(SynthConfig(out=str(tmp), days=1, instruments=4, accounts=accounts, levels=2,
                                 snapshots_per_day=10))
        market = store.open_market(data["market"])
        yield market, store.open_positions(data["positions"], market=market)
    finally:
        shutil.rmtree(tmp)
