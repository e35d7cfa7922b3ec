"""Day groups held in memory, written by ``stores.direct`` (``days.write_day_in_memory``):
the same files, metadata documents and chunk bytes as xarray's writer, and the same
dataset read back, for any sizes, chunkings, empty chunks and attributes; what it does not
handle is left to xarray."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_risk import store
from gpu_risk.stores import days

BOOKKEEPING = ("gpu_risk_write_id", "gpu_risk_sealed_ns", "gpu_risk_manifest")


def dataset(rng, n_inst, n_time, levels, empty_float, empty_int) -> xr.Dataset:
    names = np.array([f"I{i}" for i in range(n_inst)], dtype=str)
    time = pd.date_range("2026-01-05", periods=n_time, freq="s").values + np.timedelta64(1, "s")
    grid = rng.normal(size=(n_inst, n_time, levels))
    grid[rng.random(grid.shape) < 0.2] = np.nan
    if empty_float:  # whole chunks of NaN (zarr does not write them)
        grid[:, : n_time // 2] = np.nan
    counts = rng.integers(0, 5, size=(n_inst, n_time))
    if empty_int:
        counts[:, n_time // 2:] = 0
    return xr.Dataset(
        {"ofi": (("instrument", "time", "level"), grid, {"units": "see size_units", "long_name": "x"}),
         "mid_price": (("instrument", "time"), grid[:, :, 0] * 10, {"units": "quote currency"}),
         "n_updates": (("instrument", "time"), counts.astype(np.int64), {"units": "1"})},
        coords={"instrument": names, "time": time, "level": np.arange(1, levels + 1),
                "band": ("band", np.array([5.0, 10.0]), {"units": "bps"}),
                "size_units": ("instrument", np.array(["base units"] * n_inst, dtype=str), {"long_name": "u"})},
        attrs={"bucket": "PT1S", "count": np.int64(3), "ratio": np.float64(0.5), "list": [1, 2]})


def written_files(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        key = file.relative_to(root).as_posix()
        if file.name == "zarr.json":
            doc = json.loads(file.read_text())
            for name in BOOKKEEPING:
                doc.get("attributes", {}).pop(name, None)
            out[key] = doc
        else:
            out[key] = file.read_bytes()
    return out


@given(seed=st.integers(0, 10_000), n_inst=st.integers(1, 3), n_time=st.integers(1, 300),
       levels=st.integers(1, 4), time_chunk=st.integers(1, 128), empty_float=st.booleans(),
       empty_int=st.booleans(), compression=st.sampled_from(["lz4", "none"]))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_same_files_bytes_and_dataset_as_xarray(tmp_path, seed, n_inst, n_time, levels, time_chunk,
                                                    empty_float, empty_int, compression):
    ds = dataset(np.random.default_rng(seed), n_inst, n_time, levels, empty_float, empty_int)
    chunks = {"instrument": 1, "time": time_chunk}
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "theirs.zarr"
    for path in (ours, theirs):
        shutil.rmtree(path, ignore_errors=True)
        store.init_store(path, "results")
        store.set_store_compression(path, compression)
    assert days.write_day_in_memory(ds, ours, "day/g", chunks)
    days.write_day_dataset(ds, theirs, "day/g", chunks)
    assert written_files(ours / "day" / "g") == written_files(theirs / "day" / "g")
    a = days.open_day_dataset(ours, "day/g").load()
    b = days.open_day_dataset(theirs, "day/g").load()
    xr.testing.assert_identical(a.drop_encoding(), b.drop_encoding())
    xr.testing.assert_identical(a.drop_encoding().drop_attrs(deep=False), ds.drop_attrs(deep=False))
    assert days.is_complete(ours, "day/g") and days.is_sealed(ours, "day/g", a.encoding)
    codecs = [c["name"] for c in json.loads((ours / "day" / "g" / "ofi" / "zarr.json").read_text())["codecs"]]
    assert codecs == (["bytes", "crc32c"] if compression == "none" else ["bytes", "blosc", "crc32c"])


def test_what_it_does_not_handle_is_left_to_xarray(tmp_path):
    ds = dataset(np.random.default_rng(0), 2, 10, 2, False, False)
    store.init_store(tmp_path / "r.zarr", "results")
    lazy = ds.chunk({"time": 5})
    flagged = ds.assign(qc=(("instrument", "time"), np.zeros((2, 10), dtype=bool)))
    scaled = ds.assign(x=("time", np.arange(10.0), {"scale_factor": 0.5}))
    for other in (lazy, flagged, scaled):
        assert not days.write_day_in_memory(other, tmp_path / "r.zarr", "g")
        assert not (tmp_path / "r.zarr" / "g").exists()
