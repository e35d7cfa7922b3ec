"""What the CRC-32C every chunk carries costs: a book-like int32 tick array (1,000,000 x 10)
written and read in memory with the store's codecs, with and without the checksum.

    python benchmarks/checksums.py
"""

import time

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec


def book_ticks(rows: int = 1_000_000, levels: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    mid = 600_000 + np.cumsum(rng.integers(-2, 3, rows))
    return (mid[:, None] - 1 - np.arange(levels)[None, :]).astype(np.int32)


def bench(values: np.ndarray, compressors, repeat: int = 7) -> tuple[float, float]:
    best_w = best_r = float("inf")
    for _ in range(repeat):
        a = zarr.create_array(store={}, shape=values.shape, chunks=(262_144, values.shape[1]), dtype="int32",
                              compressors=compressors)
        t = time.perf_counter()
        a[:] = values
        best_w = min(best_w, time.perf_counter() - t)
        t = time.perf_counter()
        a[:]
        best_r = min(best_r, time.perf_counter() - t)
    return best_w, best_r


def main() -> None:
    x = book_ticks()
    blosc = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    w0, r0 = bench(x, blosc)
    w1, r1 = bench(x, blosc + (Crc32cCodec(),))
    print(f"1,000,000 x 10 int32 ticks, 262,144-row chunks, in memory, best of 7: write {w0 * 1e3:.1f} -> "
          f"{w1 * 1e3:.1f} ms ({(w1 / w0 - 1) * 100:+.0f} %), read {r0 * 1e3:.1f} -> {r1 * 1e3:.1f} ms "
          f"({(r1 / r0 - 1) * 100:+.0f} %) with the checksum")


if __name__ == "__main__":
    main()
