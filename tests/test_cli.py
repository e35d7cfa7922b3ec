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



def test_stress_with_a_book_and_contagion_with_the_power_model(tiny_dataset, tmp_path):
    """`gpu-risk stress --book` adds the liquidity shortfall of the day's last book snapshot,
    `gpu-risk contagion --depth-extrapolation power` walks into the fitted depth model: each
    equals the public function on the same inputs."""
    import xarray as xr

    from gpu_risk import contagion, store, stress_surface

    d = tiny_dataset
    day = d["days"][0]
    common = ["--start", day, "--end", day, "--scheduler", "sync", "--backend", "cpu", "--json"]
    cli("stress", "--book", d["book"], "--positions", d["positions"], "--market", d["market"],
        "--price-shocks=-0.3:0.3:7", "--haircut-shocks", "0,0.1", "--out", tmp_path / "s.zarr", *common)
    cli("contagion", "--book", d["book"], "--positions", d["positions"], "--market", d["market"], "--every", "6h",
        "--initial-shocks=-0.1,0.05", "--depth-extrapolation", "power", "--out", tmp_path / "c.zarr", *common)
    mkt = store.open_market(d["market"], day)
    pos = store.open_positions(d["positions"], day, market=mkt)
    book = store.open_book(d["book"], start=day, end=day)
    perps = xr.DataTree.from_dict({f"/{n}": book[n].to_dataset() for n in book.children
                                   if str(mkt.kind.sel(instrument=n).values) != "option"})
    got = store.open_results(tmp_path / "s.zarr")[day]["stress"].to_dataset().load()
    want = stress_surface(pos, mkt, [-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3], haircut_shocks=[0, 0.1],
                          book=perps).compute()
    xr.testing.assert_allclose(got.liquidity_shortfall, want.liquidity_shortfall, rtol=1e-12)
    assert float(got.liquidity_shortfall.max()) > 0
    got = store.open_results(tmp_path / "c.zarr")[day]["contagion"].to_dataset().load()
    want = contagion(perps, pos, mkt, "6h", [-0.1, 0.05], depth_extrapolation="power")
    assert got.attrs["depth_extrapolation"] == "power"
    xr.testing.assert_identical(got.final_price.drop_attrs(), want.final_price.drop_attrs())

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


def _one_line(done, *parts):
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "pydantic" not in done.stderr, done.stderr
    assert "validation error for" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    text = " ".join(done.stderr.split())
    for part in parts:
        assert part in text, (part, text)


def test_each_mistake_a_newcomer_made_is_one_line_or_works(tmp_path):
    """The command line as a newcomer used it: every mistake ends in one line in the user's
    terms (no traceback, no pydantic text); what they expected to work, works."""
    import re

    made = json.loads(cli("synth", "--out", tmp_path / "d", "--days", 2, "--instruments", 2, "--accounts", 120,
                          "--snapshots-per-day", 300, "--levels", 3, "--json").stdout)
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: t\nstores: {{book: {made['book']}, positions: {made['positions']}, "
                  f"market: {made['market']}}}\nfamilies: [liquidation]\noutput: {tmp_path / 'o.zarr'}\n"
                  "scheduler: sync\n")
    # --version, -h, choices, defaults, nothing cut at 80 columns, no <bool>
    assert re.fullmatch(r"gpu-risk \d+\.\d+\.\d+\S*\n", cli("--version").stdout)
    env80 = {**os.environ, "COLUMNS": "80"}
    helps = {}
    for command in ("stress", "cascade", "imbalance", "run", "liquidation"):
        done = subprocess.run([sys.executable, "-m", "gpu_risk.cli", command, "-h"], capture_output=True,
                              text=True, env=env80)
        assert done.returncode == 0, done.stderr
        helps[command] = done.stdout
        assert "<bool>" not in done.stdout and "…" not in done.stdout
        assert max(len(line) for line in done.stdout.splitlines()) <= 80
    assert "--backend [auto|cpu|gpu]" in helps["stress"] or "<auto|cpu|gpu>" in helps["stress"]
    assert "--keep-account-surfaces" in helps["stress"] and "START:STOP:STEP" in helps["stress"]
    flat = " ".join(helps["cascade"].split())
    for option, default in (("--every", "1min"), ("--depth-extrapolation", "0.002"), ("--initial-shocks", "-0.2")):
        assert re.search(re.escape(option) + r".*?\[default: \(?" + re.escape(default), flat), option
    # pydantic text never leaks: a bad date, a family without its store, a backend not offered
    _one_line(cli("run", wf, "--start", "2026-13-01", check=False), "start", "2026-13-01", "month")
    _one_line(cli("imbalance", "--out", tmp_path / "x.zarr", check=False), "needs the book store")
    bad_backend = cli("liquidation", "--positions", made["positions"], "--market", made["market"],
                      "--out", tmp_path / "x.zarr", "--backend", "cuda", check=False)
    _one_line(bad_backend, "'cuda' is not one of 'auto', 'cpu', 'gpu'", "gpu-risk liquidation -h")
    _one_line(cli("stress", "--bogus", check=False), "No such option: --bogus")
    _one_line(cli("nosuch", check=False), "No such command 'nosuch'")
    assert "Usage: gpu-risk" in cli("import").stdout  # a group alone: its help, exit 0
    # shock grids as a user writes them: steps and percentages
    for grid, expected in (("-0.5:0.5:0.05", 21), ("-50%,0,50%", 3), ("-50%:50%:25%", 5), ("-0.2:0.2:5", 5)):
        out = tmp_path / f"s{expected}-{grid.count('%')}.zarr"
        done = cli("stress", "--positions", made["positions"], "--market", made["market"], "--out", out,
                   f"--price-shocks={grid}", "--vol-shocks=0", "--scheduler", "sync", check=False)
        assert done.returncode == 0, (grid, done.stderr)
        from gpu_risk import store

        shocks = store.open_results(out)[made["days"][-1]]["stress"].to_dataset().price_shock.values
        assert len(shocks) == expected and shocks[0] < 0 < shocks[-1], (grid, shocks)
    _one_line(cli("stress", "--positions", made["positions"], "--market", made["market"], "--out", tmp_path / "y",
                  "--price-shocks=-0.5:0.5:0.3", check=False), "--price-shocks", "whole number of STEPs")
    _one_line(cli("stress", "--positions", made["positions"], "--market", made["market"], "--out", tmp_path / "y",
                  "--price-shocks=-5x", check=False), "--price-shocks", "'-5x' is not a number")
    # report: on a book store, on nothing, --json
    _one_line(cli("report", made["book"], check=False), "is a book store, not a results store")
    _one_line(cli("report", tmp_path / "nope.zarr", check=False), "no results store here", "nope.zarr")
    assert cli("run", wf).returncode == 0
    shown = cli("report", tmp_path / "o.zarr", "--out", tmp_path / "r.html", "--json")
    assert json.loads(shown.stdout)["summary"]["accounts_below_1"] is not None
    # validate: nothing named; a readable answer otherwise
    _one_line(cli("validate", check=False), "nothing to validate")
    ok = cli("validate", "--market", made["market"])
    assert "valid market" in ok.stderr and "{" not in ok.stderr
    # dates outside the store say what the store holds
    _one_line(cli("run", wf, "--start", "2027-01-01", check=False), "it holds", made["days"][0], made["days"][-1])
    # no CuPy noise on a CPU machine; log lines carry the time; the dashboard needs a cluster
    assert "ModuleNotFoundError" not in shown.stderr
    again = cli("run", wf, "--redo", "all")
    assert "ModuleNotFoundError" not in again.stderr and re.search(r"^\d\d:\d\d:\d\d ", again.stderr, re.M)
    _one_line(cli("run", wf, "--dashboard", "--scheduler", "threads", check=False), "--dashboard needs")


def test_the_makefile_finds_python_once_and_silently(tmp_path):
    """A pyenv shim for a version that is not installed used to print 'command not found'
    at every use of $(PYTHON); the probe now runs once, quietly."""
    from pathlib import Path

    shim = tmp_path / "python3.13"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.13: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["make", "-n", "-C", str(root), "demo"], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert "command not found" not in done.stderr and "pyenv" not in done.stdout
