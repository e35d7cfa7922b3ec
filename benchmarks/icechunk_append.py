"""Appending days to per-instrument arrays: Icechunk (one commit per day) against the
instrument-arrays book layout on plain Zarr (one index write per day).

    pip install icechunk && python benchmarks/icechunk_append.py

Not part of the package's dependencies: the figures decided against it (docs/performance.md,
"History").
"""
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

try:
    import icechunk
except ImportError:
    sys.exit("needs icechunk: pip install icechunk")

from gpu_risk import store
from gpu_risk.stores.book_arrays import BOOK_LAYOUT_ATTR, INSTRUMENT_ARRAYS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_book

DAYS, ROWS, LEVELS = 60, 5000, 10
books = [make_book(n=ROWS, levels=LEVELS, seed=d,
                   start=str(np.datetime64("2026-01-01") + np.timedelta64(d, "D")) + "T00:00")
         for d in range(DAYS)]
books = [b.assign(bid_price=b.bid_price + 1000.0, ask_price=b.ask_price + 1000.0) for b in books]
root = tempfile.mkdtemp(prefix="gpu_risk_icechunk_")
# plain zarr instrument arrays, a day per write_book call (one commit each)
path = f"{root}/plain.zarr"
store.init_store(path, "book")
zarr.open_group(path, mode="r+").attrs[BOOK_LAYOUT_ATTR] = INSTRUMENT_ARRAYS
t = time.perf_counter()
for b in books:
    store.write_book(b, path, "X")
t_plain = time.perf_counter() - t
# icechunk: the same arrays, one commit per day
repo = icechunk.Repository.create(icechunk.local_filesystem_storage(f"{root}/ice"))
s = repo.writable_session("main")
g = zarr.group(store=s.store, zarr_format=3)
inst = g.create_group("X")
for n in ("bid_price", "ask_price", "bid_size", "ask_size"):
    inst.create_array(n, shape=(0, LEVELS), chunks=(262_144, LEVELS), dtype="float64", fill_value=np.nan)
inst.create_array("time", shape=(0,), chunks=(262_144,), dtype="int64", fill_value=0)
s.commit("create")
t = time.perf_counter()
rows = 0
commits = []
for b in books:
    c0 = time.perf_counter()
    s = repo.writable_session("main")
    grp = zarr.open_group(s.store, path="X", mode="r+")
    n = b.sizes["time"]
    for name in ("bid_price", "ask_price", "bid_size", "ask_size", "time"):
        a = grp[name]
        a.resize((rows + n, *a.shape[1:]))
        a[rows:rows + n] = b[name].values if name != "time" else b.time.values.view(np.int64)
    grp.attrs["days"] = {**dict(grp.attrs.get("days", {})), str(b.time.values[0])[:10]: [rows, rows + n]}
    s.commit(f"day {rows}")
    rows += n
    commits.append(time.perf_counter() - c0)
t_ice = time.perf_counter() - t
# open: latest
t = time.perf_counter()
s = repo.readonly_session("main")
x = zarr.open_group(s.store, path="X", mode="r")["bid_price"][:]
t_ice_read = time.perf_counter() - t
t = time.perf_counter()
y = store.open_book_instrument(path, "X")["bid_price"].values
t_plain_read = time.perf_counter() - t
print(f"{DAYS} days x {ROWS:,} snapshots x {LEVELS} levels, appended a day at a time:")
print(f"  instrument arrays on plain Zarr (tick encoding, validation summary, index commit): "
      f"{t_plain / DAYS * 1000:.1f} ms a day")
print(f"  Icechunk 1.1 (float64, Zarr defaults, one commit a day): {t_ice / DAYS * 1000:.1f} ms a day "
      f"(first 5 {np.mean(commits[:5]) * 1000:.1f} ms, last 5 {np.mean(commits[-5:]) * 1000:.1f} ms)")
print(f"  read everything back: plain {t_plain_read:.3f} s (decoded, validated record trusted), "
      f"Icechunk {t_ice_read:.3f} s (raw)")
shutil.rmtree(root, ignore_errors=True)
