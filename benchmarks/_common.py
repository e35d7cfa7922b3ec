"""Shared by the benchmarks: the machine's own memory read bandwidth, and timing."""

from __future__ import annotations

import os
import platform
import time

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
