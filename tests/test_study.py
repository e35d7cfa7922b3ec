"""Leverage as history and the study workflow: the leverage grid against a plain loop, the
study dataset against the day results it joins, and a study run end to end."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_risk import store
from gpu_risk.errors import InputError
from gpu_risk.leverage import LEVEL_FIELDS, last_values, leverage_day
from gpu_risk.study import build_study, open_study, relation
from gpu_risk.synth import SynthConfig, synth
from gpu_risk.workflow import load_config, run_workflow

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows/study.yaml"
DAY = "2026-01-05"


def _history(seed: int, n: int, nan_share: float = 0.2) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    t = np.datetime64(DAY, "ns") + np.sort(rng.integers(0, 86_400 * 10**9, n)).astype("timedelta64[ns]")
    values = {name: rng.normal(100, 5, n) for name in LEVEL_FIELDS}
    values["last_price"] = rng.normal(100, 5, n)
    for name in values:  # a field the venue left empty in an update
        values[name][rng.random(n) < nan_share] = np.nan
    return xr.Dataset({k: ("time", v) for k, v in values.items()}, coords={"time": t})


def _reference(day_ds: xr.Dataset, bucket: str, carry: dict | None) -> dict[str, np.ndarray]:
    """Bucket by bucket: each field's last non-NaN update before the bucket's end, else the
    carry; OI change against the previous bucket (the carry for the first)."""
    width = pd.Timedelta(bucket)
    starts = pd.date_range(DAY, periods=int(pd.Timedelta("1D") / width), freq=width)
    times = pd.DatetimeIndex(day_ds.time.values)
    out: dict[str, list] = {name: [] for name in (*LEVEL_FIELDS, "n_updates")}
    for start in starts:
        end = start + width
        for name in LEVEL_FIELDS:
            value = (carry or {}).get(name, np.nan)
            for i in range(len(times)):
                if times[i] < end and np.isfinite(day_ds[name].values[i]):
                    value = day_ds[name].values[i]
            out[name].append(value)
        out["n_updates"].append(sum(1 for x in times if start <= x < end))
    ref = {k: np.array(v, dtype=float) for k, v in out.items()}
    prev = np.concatenate([[(carry or {}).get("open_interest", np.nan)], ref["open_interest"][:-1]])
    ref["open_interest_change"] = ref["open_interest"] - prev
    ref["basis"] = ref["mark_price"] / ref["index_price"] - 1
    return ref


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 60), st.sampled_from(["1h", "3h", "30min"]), st.booleans())
def test_leverage_day_matches_a_bucket_by_bucket_loop(seed, n, bucket, with_carry):
    day = _history(seed, n)
    carry = {name: float(v) for name, v in zip(LEVEL_FIELDS, np.random.default_rng(seed).normal(90, 3, 5))} \
        if with_carry else None
    got = leverage_day(day, DAY, bucket, carry)
    ref = _reference(day, bucket, carry)
    width = pd.Timedelta(bucket)  # labelled by the bucket's end
    assert got.time.values[0] == np.datetime64(DAY, "ns") + width and got.time.values[-1] == np.datetime64(
        "2026-01-06", "ns")
    for name, values in ref.items():
        np.testing.assert_array_equal(got[name].values, values, err_msg=name)


def test_last_values_and_bad_inputs():
    day = _history(1, 40)
    last = last_values(day)
    for name in LEVEL_FIELDS:
        v = day[name].values
        assert last[name] == v[np.isfinite(v)][-1]
    with pytest.raises(ValueError, match="divides a day"):
        leverage_day(day, DAY, "7min")
    late = day.assign_coords(time=day.time.values + np.timedelta64(2, "D"))
    with pytest.raises(InputError, match="outside the day"):
        leverage_day(late, DAY, "1h")
    shuffled = day.isel(time=np.random.default_rng(0).permutation(day.sizes["time"]))
    with pytest.raises(InputError, match="not in time order"):
        leverage_day(shuffled, DAY, "1h")


def test_relation_on_known_data():
    x = np.arange(10.0)
    found = relation(x, 2 * x + 1)
    assert found["pearson"] == pytest.approx(1.0) and found["spearman"] == pytest.approx(1.0)
    assert found["slope"] == pytest.approx(2.0) and found["n"] == 10
    assert np.isnan(relation(x, np.full(10, 3.0))["pearson"])
    assert relation(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, np.nan]))["n"] == 1


@pytest.fixture(scope="module")
def study_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    synth(SynthConfig(out=str(out), days=3, instruments=2, accounts=500, snapshots_per_day=4_000,
                      market_history=True))
    return out


def _config(data: Path, tmp: Path, **overrides):
    stores = {k: data / f"{k}.zarr" for k in ("book", "positions", "market", "market_history")}
    cfg = load_config(WORKFLOW, {"stores": stores, "output": tmp / "results.zarr", "scheduler": "sync",
                                 **overrides})
    return cfg.model_copy(update={"study": cfg.study.model_copy(update={
        "output": tmp / "study.zarr", "report": tmp / "study.html"})})


def test_the_study_workflow_end_to_end(study_data, tmp_path):
    cfg = _config(study_data, tmp_path)
    summary = run_workflow(cfg)
    assert summary["computed"] == summary["dates"] and len(summary["dates"]) == 3
    ds = open_study(tmp_path / "study.zarr").load()
    assert ds.sizes["time"] == 72 and list(ds.instrument.values) == ["BTCUSDT", "ETHUSDT"]
    assert "Funding and the change of open interest</h2>" in (tmp_path / "study.html").read_text()
    results = store.open_results(tmp_path / "results.zarr")
    # the leverage results are leverage_day of the stored market history, day by day
    for k, day in enumerate(summary["dates"]):
        held = store.open_market_history_day(study_data / "market_history.zarr", "BTCUSDT", day)
        expected = leverage_day(*held[:1], day, "5min", held[1])
        got = results[day]["leverage"].to_dataset().sel(instrument="BTCUSDT").load()
        for name in ("funding_rate", "open_interest", "open_interest_change", "basis"):
            np.testing.assert_array_equal(got[name].values, expected[name].values)
        if k:  # continued from the previous day: no NaN at midnight
            assert np.isfinite(got.open_interest_change.values[0])
    # the study's hourly OFI and mid are the imbalance grid's, summed and last per hour
    grid = xr.concat([results[d]["imbalance"].to_dataset() for d in summary["dates"]], "time").load()
    for inst in ("BTCUSDT", "ETHUSDT"):
        g = grid.sel(instrument=inst)
        g = g.assign_coords(time=g.time.values - np.timedelta64(1, "m"))  # each 1 min bucket's start
        ofi = g.ofi.isel(level=0).to_series().resample("1h", label="right").sum()
        mid = g.mid_price.to_series().resample("1h", label="right").last()
        np.testing.assert_array_equal(ds.time.values, ofi.index.values)
        np.testing.assert_allclose(ds.ofi.sel(instrument=inst).values, ofi.values, rtol=1e-12)
        np.testing.assert_array_equal(ds.mid_price.sel(instrument=inst).values, mid.values)
        r = np.log(mid).diff()
        np.testing.assert_allclose(ds.log_return.sel(instrument=inst).values[1:], r.values[1:], rtol=1e-12)
        np.testing.assert_allclose(ds.next_abs_return.sel(instrument=inst).values[:-1], np.abs(r.values[1:]),
                                   rtol=1e-12)
        # fragility: the mean amplification at -5 % over each hour's cascade snapshots
        casc = xr.concat([results[d]["cascade"].to_dataset() for d in summary["dates"]], "time")
        amp = casc.amplification.sel(instrument=inst, initial_shock=-0.05).to_series().resample(
            "1h", label="right").mean()
        np.testing.assert_allclose(ds.fragility.sel(instrument=inst).values, amp.values, rtol=1e-12)
    # a re-run skips every day and writes the same study
    again = run_workflow(cfg)
    assert again["computed"] == [] and again["study"]["buckets"] == 72
    xr.testing.assert_identical(open_study(tmp_path / "study.zarr").load(), ds)
    # another leverage bucket recomputes the leverage family only
    cfg2 = cfg.model_copy(update={"settings": {**cfg.settings, "leverage": cfg.settings["leverage"].model_copy(
        update={"bucket": "15min"})}})
    third = run_workflow(cfg2)
    assert third["computed"] == summary["dates"]
    assert store.open_results(tmp_path / "results.zarr")[summary["dates"][0]]["leverage"].sizes["time"] == 96


def test_a_study_of_a_sub_range_is_that_range(study_data, tmp_path):
    cfg = _config(study_data, tmp_path, start="2026-01-06", end="2026-01-06")
    summary = run_workflow(cfg)
    assert summary["dates"] == ["2026-01-06"]
    ds = open_study(tmp_path / "study.zarr")
    assert ds.attrs["days"] == ["2026-01-06"] and ds.sizes["time"] == 24
    with pytest.raises(ValueError, match="no day to study"):
        build_study(tmp_path / "results.zarr", [])


def test_from_tardis_files_to_the_study_report(tmp_path):
    """The walk of docs/study.md on real data: the shared USD-M Binance capture written as
    Tardis incremental_book_L2 rows (gzip), a derivative_ticker file over the same hours,
    both imported with the command line, then the study workflow with the book and
    market-history families: a study dataset whose OFI is the imported book's, and a report."""
    import gzip
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_import_tardis import USDM, _binance_as_tardis

    if not USDM.exists():
        pytest.skip("shared Binance capture not present")
    rows = tmp_path / "binance-futures_incremental_book_L2_BTCUSDT.csv"
    _binance_as_tardis(USDM, rows)
    with open(rows, "rb") as f, gzip.open(str(rows) + ".gz", "wb") as g:
        g.write(f.read())
    times = pd.read_csv(rows, usecols=["timestamp"]).timestamp
    head = ("exchange,symbol,timestamp,local_timestamp,funding_timestamp,funding_rate,predicted_funding_rate,"
            "open_interest,last_price,index_price,mark_price\n")
    rng = np.random.default_rng(5)
    ticks = range(int(times.min()) - 60_000_000, int(times.max()) + 60_000_000, 1_000_000)
    ticker = tmp_path / "binance-futures_derivative_ticker_BTCUSDT.csv"
    ticker.write_text(head + "".join(
        f"binance-futures,BTCUSDT,{t},{t + 50},{(t // 28_800_000_000 + 1) * 28_800_000_000},"
        f"{rng.normal(1e-4, 2e-5)!r},{rng.normal(1e-4, 2e-5)!r},{80_000 + k * 0.5!r},61800.0,61790.0,61805.0\n"
        for k, t in enumerate(ticks)))
    cli = [sys.executable, "-m", "gpu_risk.cli"]
    for files, out in (([str(rows) + ".gz"], "book.zarr"), ([str(ticker)], "market_history.zarr")):
        done = subprocess.run([*cli, "import", "tardis", *files, "--out", str(tmp_path / out), "--levels", "10"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    done = subprocess.run([*cli, "run", str(WORKFLOW), "--book", str(tmp_path / "book.zarr"), "--market-history",
                           str(tmp_path / "market_history.zarr"), "--families", "imbalance,leverage",
                           "--output", str(tmp_path / "results.zarr"), "--scheduler", "sync"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "study: 1 instrument(s) x 48 buckets" in done.stderr + done.stdout
    ds = open_study(tmp_path / "results/study_dataset.zarr").load()
    days = store.open_results(tmp_path / "results.zarr").children.values()
    grid = xr.concat([r["imbalance"].to_dataset() for r in days], "time").sel(instrument="BTCUSDT")
    assert float(ds.ofi.sum()) == pytest.approx(float(grid.ofi.isel(level=0).sum()), rel=1e-12)
    assert np.isfinite(ds.funding_rate.values).sum() >= 1 and np.isfinite(ds.open_interest.values).any()
    assert "OFI and the return, per 1h" in (tmp_path / "results/study.html").read_text()


def test_bad_market_history_is_one_line_naming_instrument_field_and_day(study_data, tmp_path):
    """An infinite field, and a day of the book without any market history: each run ends
    in one line naming what and where, and writes no study."""
    import shutil

    from gpu_risk.leverage import leverage_grid

    day = _history(3, 30)
    day["open_interest"].values[7] = np.inf
    with pytest.raises(InputError, match=r"open_interest is inf .*instrument 'XYZ'.*variable 'open_interest'"):
        leverage_grid({"XYZ": (day, None)}, DAY, "1h")
    data = tmp_path / "data"
    shutil.copytree(study_data, data)
    for inst in ("BTCUSDT", "ETHUSDT"):  # the middle day's market history is gone
        shutil.rmtree(data / "market_history.zarr" / inst / "2026-01-06")
    cfg = _config(data, tmp_path, families=["leverage"])
    with pytest.raises(InputError, match="no instrument has market history on 2026-01-06"):
        run_workflow(cfg)
    assert not (tmp_path / "study.zarr").exists()
    assert store.results_days(tmp_path / "results.zarr") == ["2026-01-05"]  # the days before stay
