"""Validation runs once per dataset: the fused rules kernel against the reference
expressions, stamps that later functions trust, and counts of validation passes."""

import numpy as np
import pytest
import xarray as xr
from conftest import make_book
from gpu_risk.kernels.qc import BOOK_RULE_BITS
from hypothesis import given
from hypothesis import strategies as st

from gpu_risk import validate as validate_module
from gpu_risk.validate import book_row_flags, book_rule_mask, is_validated, validate_book_dataset

CORRUPTIONS = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e308, 2e15, 1e18, 1.5e18]


@given(seed=st.integers(0, 10_000), n_bad=st.integers(0, 30), chunk=st.integers(1, 60))
def test_fused_rules_equal_the_reference_expressions(seed, n_bad, chunk):
    rng = np.random.default_rng(seed)
    ds = make_book(n=60, levels=4, seed=seed)
    for _ in range(n_bad):  # any value anywhere: NaN, inf, zero, negative, a copy of a neighbour
        name = ["bid_price", "ask_price", "bid_size", "ask_size"][rng.integers(4)]
        row, level = rng.integers(60), rng.integers(4)
        values = ds[name].values
        values[row, level] = (CORRUPTIONS[rng.integers(len(CORRUPTIONS))] if rng.random() < 0.6
                              else values[row, max(level - 1, 0)])
    reference = {key: flag.values for key, flag in book_row_flags(ds).items()}
    for data in (ds, ds.chunk({"time": chunk})):
        mask = book_rule_mask(data)
        for key, bit in BOOK_RULE_BITS.items():
            np.testing.assert_array_equal((mask & bit) != 0, reference[key], err_msg=str(key))


def test_infinite_size_is_a_bad_size():
    ds = make_book()
    ds["ask_size"].values[3, 1] = np.inf
    out = validate_book_dataset(ds, on_bad_rows="flag")
    assert out["qc_bad_size"].values.nonzero()[0].tolist() == [3]


def test_stamp_follows_the_data():
    ds = make_book().chunk({"time": 16})
    checked = validate_book_dataset(ds)
    assert is_validated(checked, "book") and not is_validated(ds, "book")
    assert not is_validated(checked.assign(bid_size=checked.bid_size * 2), "book")
    assert is_validated(checked.copy(), "book")


def _count(monkeypatch, name):
    calls = {"n": 0}
    original = getattr(validate_module, name)

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    from gpu_risk.stores import book, book_arrays, days, market, positions, results

    for module in (validate_module, book, book_arrays, days, market, positions, results):  # holding it by name
        if hasattr(module, name):
            monkeypatch.setattr(module, name, counting)
    return calls


def test_readme_api_example_validates_each_input_once(tmp_path, monkeypatch):
    """The README's Python example: book, market and positions validated once each."""
    import gpu_risk
    from gpu_risk.synth import SynthConfig, synth

    data = synth(SynthConfig(out=str(tmp_path), days=2, instruments=2, accounts=300,
                             snapshots_per_day=400, levels=5))
    counts = {name: _count(monkeypatch, name) for name in
              ("validate_book_dataset", "validate_market", "validate_positions")}
    book = gpu_risk.open_book(data["book"])
    market = gpu_risk.open_market(data["market"])
    positions = gpu_risk.open_positions(data["positions"], market=market)
    gpu_risk.imbalance_grid(book, bucket="10s").compute()
    liq = gpu_risk.liquidation(positions, market)
    gpu_risk.stress_surface(positions, market, [-0.3, 0, 0.3], vol_shocks=[0, 0.1])
    gpu_risk.cascade(book, positions, market, "1min", [-0.1, 0.1], liquidation=liq,
                     depth_extrapolation=0.002)
    assert counts["validate_market"]["n"] == 1
    # positions and book days were validated when written and that is recorded with them
    assert counts["validate_positions"]["n"] <= 1
    assert counts["validate_book_dataset"]["n"] <= 2


def test_unvalidated_book_is_checked_by_imbalance_grid():
    from gpu_risk import imbalance_grid
    from gpu_risk.errors import InputError

    ds = make_book()
    ds["bid_price"].values[5, 0] = ds["ask_price"].values[5, 0]
    with pytest.raises(InputError, match="crossed"):
        imbalance_grid(ds, bucket="1s")
    imbalance_grid(validate_book_dataset(ds, on_bad_rows="flag"), bucket="1s")  # flagged: runs


def test_flagged_stamped_book_keeps_flags():
    ds = make_book()
    ds["ask_size"].values[2, 0] = -1.0
    flagged = validate_book_dataset(ds, on_bad_rows="flag")
    assert is_validated(flagged, "book") and int(flagged["qc_row_excluded"].sum()) == 1
    assert isinstance(flagged, xr.Dataset)


def _write_day_by_slabs(path, ds, instrument="X"):
    from gpu_risk import store

    writer = store.book_writer(path, instrument, ds["time"].values[0], ds["time"].values,
                               ds.sizes["level"], chunk_rows=16)
    for start in range(0, ds.sizes["time"], 16):
        writer.write(start, ds.isel(time=slice(start, start + 16)))
    writer.close()


def test_store_records_validation_and_opening_trusts_it(tmp_path, monkeypatch):
    from gpu_risk import store
    from gpu_risk.errors import InputError

    good = make_book(n=40, start="2026-01-05T10:00")
    _write_day_by_slabs(tmp_path / "b.zarr", good)
    summary = store.zarr.open_group(str(tmp_path / "b.zarr"), path="X/2026-01-05").attrs[store.QC_ATTR]
    assert summary["bad_rows"] == 0 and summary["rows"] == 40 and summary["last_valid_row"] == 39
    calls = _count(monkeypatch, "validate_book_dataset")
    opened = store.open_book_instrument(tmp_path / "b.zarr", "X")
    assert calls["n"] == 0 and is_validated(opened, "book")
    flagged = store.open_book_instrument(tmp_path / "b.zarr", "X", on_bad_rows="flag")
    assert calls["n"] == 0 and not flagged["qc_row_excluded"].any()

    bad = make_book(n=40, start="2026-01-06T10:00", seed=3)
    bad["bid_price"].values[-1, 0] = bad["ask_price"].values[-1, 0]  # the last row is crossed
    _write_day_by_slabs(tmp_path / "b.zarr", bad)
    summary = store.zarr.open_group(str(tmp_path / "b.zarr"), path="X/2026-01-06").attrs[store.QC_ATTR]
    assert summary["bad_rows"] == 1 and summary["last_valid_row"] == 38
    with pytest.raises(InputError, match="crossed"):  # a day with bad rows is validated again
        store.open_book_instrument(tmp_path / "b.zarr", "X")
    assert calls["n"] == 1
    prev = store.last_valid_snapshot(tmp_path / "b.zarr", "X", "2026-01-06")
    np.testing.assert_array_equal(prev["bid_price"].values, bad["bid_price"].values[[38]])


def test_day_without_a_summary_is_validated(tmp_path, monkeypatch):
    """Stores written by other tools (or under other rules) carry no trusted summary."""
    from gpu_risk import store

    store.write_book(make_book(n=30), tmp_path / "b.zarr", "X")
    group = store.zarr.open_group(str(tmp_path / "b.zarr"), path="X/2026-01-05", mode="r+")
    group.attrs[store.QC_ATTR] = {**group.attrs[store.QC_ATTR], "rules": 1}
    calls = _count(monkeypatch, "validate_book_dataset")
    store.open_book_instrument(tmp_path / "b.zarr", "X")
    assert calls["n"] == 1
    assert store.last_valid_snapshot(tmp_path / "b.zarr", "X", "2026-01-05") is not None


def test_positions_record_their_validation_and_opening_trusts_it(tmp_path, monkeypatch):
    from conftest import MARKET_SPEC, make_positions

    from gpu_risk import store
    from gpu_risk.errors import InputError

    market = store.market_from_dict(MARKET_SPEC)
    store.write_positions(make_positions(n=30), tmp_path / "p.zarr", "2026-01-05")
    calls = _count(monkeypatch, "validate_positions")
    opened = store.open_positions(tmp_path / "p.zarr", market=market)
    flagged = store.open_positions(tmp_path / "p.zarr", market=market, on_bad_rows="flag")
    assert calls["n"] == 0 and is_validated(opened, "positions+market")
    full = store.open_positions(tmp_path / "p.zarr", market=market, on_bad_rows="flag", trust_recorded=False)
    assert calls["n"] == 1
    assert sorted(flagged.data_vars) == sorted(full.data_vars) and not flagged["qc_row_excluded"].any()
    # against a market that lacks one of its instruments, the positions are checked in full
    smaller = market.isel(instrument=[0, 1])
    with pytest.raises(InputError, match="absent from the market"):
        store.open_positions(tmp_path / "p.zarr", market=smaller)
    assert calls["n"] == 2


def test_a_day_changed_after_it_was_written_is_validated_again(tmp_path, monkeypatch):
    """The recorded validation is trusted only while nothing under the day changed since it
    was completed: a chunk rewritten by another tool, or deleted, is noticed and checked."""
    import shutil

    from gpu_risk import store
    from gpu_risk.errors import InputError

    store.write_book(make_book(n=40), tmp_path / "b.zarr", "X", chunk_rows=16)
    calls = _count(monkeypatch, "validate_book_dataset")
    store.open_book_instrument(tmp_path / "b.zarr", "X")
    assert calls["n"] == 0
    node = store.zarr.open_group(str(tmp_path / "b.zarr"), path="X/2026-01-05", mode="r+")
    sizes = node["ask_size"][:]
    sizes[20, 1] = -5  # ticks: a negative size
    node["ask_size"][:] = sizes
    with pytest.raises(InputError, match="size"):
        store.open_book_instrument(tmp_path / "b.zarr", "X")
    assert calls["n"] == 1

    store.write_book(make_book(n=40, start="2026-01-06T10:00"), tmp_path / "b.zarr", "X", chunk_rows=16)
    shutil.rmtree(tmp_path / "b.zarr" / "X" / "2026-01-06" / "bid_price" / "c" / "1")
    with pytest.raises(InputError):
        store.open_book_instrument(tmp_path / "b.zarr", "X", start="2026-01-06")


def test_the_workflow_validates_each_store_day_at_most_once(tiny_dataset, tmp_path, monkeypatch):
    """Every family of the overnight workflow over two days: each market and positions day
    is validated at most once (not once per family), and book days recorded clean when
    written are not validated again."""
    import yaml

    from gpu_risk.workflow import load_config, run_workflow

    counts = {name: _count(monkeypatch, name) for name in
              ("validate_book_dataset", "validate_market", "validate_positions")}
    cfg = {"name": "t", "stores": {k: tiny_dataset[k] for k in ("book", "positions", "market")},
           "families": ["summary", "imbalance", "liquidation", "stress", "cascade"],
           "imbalance": {"bucket": "1min"}, "stress": {"price_shocks": [-0.2, 0.2], "vol_shocks": [0.0]},
           "cascade": {"every": "2h", "initial_shocks": [-0.1, 0.1]},
           "output": str(tmp_path / "out.zarr"), "scheduler": "sync", "backend": "cpu"}
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(cfg))
    summary = run_workflow(load_config(tmp_path / "wf.yaml"))
    days = len(summary["computed"])
    assert days == len(tiny_dataset["days"]) == 2
    assert counts["validate_market"]["n"] <= days
    assert counts["validate_positions"]["n"] <= days
    assert counts["validate_book_dataset"]["n"] == 0  # recorded clean when written
