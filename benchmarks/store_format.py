"""Book store formats compared on one instrument-day: size, write and read speed.

    python benchmarks/store_format.py [--snapshots 1000000] [--pipeline python|zarrs]

Each candidate (dtype, filters, compressor) writes the same day's four (time, level)
arrays with zarr and reads them back whole, one thread, from the page cache; ticked
candidates are decoded to float64 by the same numba pass the store uses. Prints the
compression ratio against raw float64, write and read snapshots/s, and read GB/s of
float64 delivered. ``--pipeline zarrs`` uses the zarrs (Rust) codec pipeline if installed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

BOOK = ("bid_price", "ask_price", "bid_size", "ask_size")
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")


def candidates():
    import zarr.codecs as zc

    blosc = lambda cname, clevel, shuffle, size: BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle,  # noqa: E731
                                                           typesize=size)
    yield "float64, zstd level 0 (zarr's default)", False, [], [ZstdCodec(level=0)]
    yield "float64, lz4", False, [], [zc.LZ4()]
    yield "float64, blosc lz4 (chosen for float64)", False, [], [blosc("lz4", 5, "noshuffle", 8)]
    yield "float64, blosc lz4, byte shuffle", False, [], [blosc("lz4", 5, "shuffle", 8)]
    yield "float64, blosc zstd 1, byte shuffle", False, [], [blosc("zstd", 1, "shuffle", 8)]
    yield "float64, uncompressed", False, [], []
    yield "int32 ticks, uncompressed", True, [], []
    yield "int32 ticks, lz4", True, [], [zc.LZ4()]
    yield "int32 ticks, blosc lz4, byte shuffle (chosen)", True, [], [blosc("lz4", 5, "shuffle", 4)]
    yield "int32 ticks, blosc lz4, bit shuffle", True, [], [blosc("lz4", 5, "bitshuffle", 4)]
    yield "int32 ticks, delta, blosc lz4, byte shuffle", True, [zc.Delta(dtype="i4")], [blosc("lz4", 5, "shuffle", 4)]
    yield "int32 ticks, blosc zstd 1, byte shuffle", True, [], [blosc("zstd", 1, "shuffle", 4)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snapshots", type=int, default=1_000_000)
    p.add_argument("--levels", type=int, default=10)
    p.add_argument("--pipeline", default="python", choices=["python", "zarrs"])
    args = p.parse_args()
    if args.pipeline == "zarrs":
        import zarrs  # noqa: F401

        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    from gpu_risk import coding, store
    from gpu_risk.synth import SynthConfig, synth

    print(f"machine: {machine()}, zarr {zarr.__version__}, codec pipeline {args.pipeline}")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_risk_format_"))
    try:
        data = synth(SynthConfig(out=str(tmp / "data"), days=1, instruments=1, accounts=10,
                                 levels=args.levels, snapshots_per_day=args.snapshots))
        day = store.open_day_dataset(data["book"], f"BTCUSDT/{data['days'][0]}").load()
        floats = {name: np.ascontiguousarray(day[name].values) for name in BOOK}
        ticks = {}
        for name, values in floats.items():
            spec, encoded = coding.choose(values, hint=0.1 if "price" in name else 0.015)
            ticks[name] = (spec, encoded)
        raw = sum(a.nbytes for a in floats.values())
        n = args.snapshots
        print(f"one instrument-day: {n:,} snapshots x {args.levels} levels, {raw / 1e6:.0f} MB as float64; "
              f"tick encodings: " + ", ".join(f"{k} {v[0]}" for k, v in ticks.items()))
        for label, ticked, filters, compressors in candidates():
            path = tmp / "candidate.zarr"
            shutil.rmtree(path, ignore_errors=True)
            group = zarr.open_group(str(path), mode="w", zarr_format=3)
            t0 = time.perf_counter()
            for name in BOOK:
                values = ticks[name][1] if ticked else floats[name]
                array = group.create_array(name, shape=values.shape, dtype=values.dtype,
                                           chunks=(store.BOOK_CHUNK_ROWS, args.levels),
                                           filters=filters, serializer=BytesCodec(), compressors=compressors)
                array[:] = values
            t_write = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            best = np.inf
            for _ in range(3):
                group = zarr.open_group(str(path), mode="r")
                t0 = time.perf_counter()
                for name in BOOK:
                    values = group[name][:]
                    if ticked:
                        values = coding._decode_block(values, *ticks[name][0])
                best = min(best, time.perf_counter() - t0)
            print(f"  {label:48s} {raw / size:5.2f}x smaller  write {n / t_write / 1e6:5.2f} M snapshots/s  "
                  f"read {n / best / 1e6:5.2f} M snapshots/s = {raw / best / 1e9:4.2f} GB/s of float64")
        results_formats(tmp, data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def results_formats(tmp: Path, data: dict) -> None:
    """The same comparison for results: one day's 1 s imbalance grid of the instrument (what
    the batch writes most of), written and read whole in the results store's chunking."""
    import gpu_risk
    from gpu_risk import store
    from gpu_risk.families import get_family

    grid = gpu_risk.imbalance_grid(store.open_book(data["book"]), "1s").compute()
    arrays = {name: np.ascontiguousarray(grid[name].values) for name in grid.data_vars}
    raw = sum(a.nbytes for a in arrays.values())
    rows = grid.sizes["time"]
    chunk_rows = get_family("imbalance").chunks["time"]
    print(f"results: one day's 1 s imbalance grid, {rows:,} buckets, {len(arrays)} variables, "
          f"{raw / 1e6:.0f} MB; time chunks of {chunk_rows:,} buckets")
    candidates = [("zstd level 0 (zarr's default)", [ZstdCodec(level=0)]),
                  ("blosc lz4 (chosen)", [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")]),
                  ("blosc lz4, byte shuffle", [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]),
                  ("blosc zstd 1, byte shuffle", [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")]),
                  ("uncompressed", [])]
    for label, compressors in candidates:
        best_write, best_read = np.inf, np.inf
        for _ in range(3):
            path = tmp / "results.zarr"
            shutil.rmtree(path, ignore_errors=True)
            group = zarr.open_group(str(path), mode="w", zarr_format=3)
            t0 = time.perf_counter()
            for name, values in arrays.items():
                chunks = (min(chunk_rows, values.shape[0]),) + values.shape[1:]
                array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks,
                                           serializer=BytesCodec(), compressors=compressors)
                array[:] = values
            best_write = min(best_write, time.perf_counter() - t0)
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            t0 = time.perf_counter()
            group = zarr.open_group(str(path), mode="r")
            for name in arrays:
                group[name][:]
            best_read = min(best_read, time.perf_counter() - t0)
        print(f"  {label:48s} {raw / size:5.2f}x smaller  write {raw / best_write / 1e9:5.2f} GB/s  "
              f"read {raw / best_read / 1e9:5.2f} GB/s")


if __name__ == "__main__":
    main()
