"""The command line as a user runs it."""

import json
import os
import subprocess
import sys

import zarr


def cli(*args, check=True):
    return subprocess.run([sys.executable, "-m", "gpu_risk.cli", *map(str, args)],
                          capture_output=True, text=True, check=check, env=os.environ.copy())


def test_synth_validate_and_bad_store_exit_codes(tmp_path):
    out = cli("synth", "--out", tmp_path / "d", "--days", 1, "--instruments", 2, "--accounts", 200,
              "--snapshots-per-day", 500, "--levels", 3, "--json")
    summary = json.loads(out.stdout)
    assert summary["instruments"] == ["BTCUSDT", "ETHUSDT"] and summary["accounts"] == 200
    ok = cli("validate", "--book", summary["book"], "--positions", summary["positions"],
             "--market", summary["market"], "--json")
    assert json.loads(ok.stdout)["book"] == {"BTCUSDT": 500, "ETHUSDT": 500}
    node = zarr.open_group(summary["book"], path=f"ETHUSDT/{summary['days'][0]}", mode="r+")
    sizes = node["ask_size"][:]
    sizes[123, 1] = -1.0
    node["ask_size"][:] = sizes
    bad = cli("validate", "--book", summary["book"], check=False)
    assert bad.returncode == 2
    message = " ".join(bad.stderr.split())
    for part in ("ETHUSDT", "ask_size", "first bad index 123", summary["book"]):
        assert part in message


def test_run_rejects_an_invalid_workflow(tmp_path):
    wf = tmp_path / "w.yaml"
    wf.write_text("name: x\nstores: {book: a, positions: b, market: c}\noutput: o\nfamilies: [risk]\n")
    bad = cli("run", wf, check=False)
    assert bad.returncode == 2 and "unknown family" in bad.stderr


def test_family_commands_write_what_the_api_computes(tiny_dataset, tmp_path):
    """`gpu-risk imbalance|liquidation|stress|cascade` write a results store whose day equals
    the public function on the same inputs."""
    import numpy as np
    import xarray as xr

    from gpu_risk import cascade, liquidation, store

    d = tiny_dataset
    day = d["days"][0]
    stores = ["--book", d["book"], "--positions", d["positions"], "--market", d["market"]]
    common = ["--start", day, "--end", day, "--scheduler", "sync", "--backend", "cpu", "--json"]
    runs = {"imbalance": ["--book", d["book"], "--bucket", "1min", "--bands-bps", "5,25"],
            "liquidation": stores[2:],
            "stress": [*stores[2:], "--price-shocks=-0.2:0.2:5", "--haircut-shocks", "0,0.1"],
            "cascade": [*stores, "--every", "15min", "--initial-shocks=-0.1,-0.02,0.05"]}
    for family, args in runs.items():
        out = cli(family, *args, "--out", tmp_path / f"{family}.zarr", *common)
        assert json.loads(out.stdout)["computed"] == [day], out.stderr
    res = {f: store.open_results(tmp_path / f"{f}.zarr")[day][f].to_dataset().load() for f in runs}
    assert res["imbalance"].sizes["band"] == 2 and res["stress"].sizes["haircut_shock"] == 2
    mkt = store.open_market(d["market"], day)
    pos = store.open_positions(d["positions"], day, market=mkt)
    book = store.open_book(d["book"], start=day, end=day)
    liq = liquidation(pos, mkt).compute()
    xr.testing.assert_identical(res["liquidation"].drop_attrs(), liq.drop_attrs())
    expected = cascade(book, pos, mkt, "15min", [-0.1, -0.02, 0.05], liquidation=liq,
                       depth_extrapolation=0.002).compute()
    xr.testing.assert_identical(res["cascade"].drop_attrs(), expected.drop_attrs())
    assert np.isfinite(res["cascade"].final_price).all()
    bad = cli("liquidation", "--positions", d["positions"], "--out", tmp_path / "x.zarr", check=False)
    assert bad.returncode == 2 and "needs the market store" in " ".join(bad.stderr.split())


def test_run_overrides_stores_dates_and_families_and_synth_refuses_other_settings(tmp_path):
    """`gpu-risk run workflows/overnight.yaml` on another dataset, one day, one family, from
    the command line alone; `synth` into a directory made with other settings is refused."""
    made = json.loads(cli("synth", "--out", tmp_path / "big", "--days", 2, "--instruments", 2, "--accounts", 150,
                          "--snapshots-per-day", 400, "--levels", 3, "--json").stdout)
    day = made["days"][1]
    out = tmp_path / "out.zarr"
    from pathlib import Path

    overnight = Path(__file__).resolve().parents[1] / "workflows" / "overnight.yaml"
    done = cli("run", overnight, "--book", made["book"], "--positions", made["positions"],
               "--market", made["market"], "--start", day, "--end", day, "--families", "liquidation,stress",
               "--output", out, "--report", tmp_path / "r.html", "--scheduler", "sync", "--json", check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["computed"] == [day]
    from gpu_risk import store

    tree = store.open_results(out)
    assert sorted(tree[day].children) == ["liquidation", "stress"]
    assert tree[day]["liquidation"].sizes["account"] == 150
    again = cli("synth", "--out", tmp_path / "big", "--days", 2, "--instruments", 2, "--accounts", 500,
                "--snapshots-per-day", 400, "--levels", 3, check=False)
    assert again.returncode == 2 and "accounts 150 (asked: 500)" in " ".join(again.stderr.split())
    assert "Traceback" not in again.stderr
