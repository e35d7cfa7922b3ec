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
    wf.write_text("name: x\nstores: {book: a, positions: b, market: c}\noutput: o\nfamilies: [cascade]\n")
    bad = cli("run", wf, check=False)
    assert bad.returncode == 2 and "not implemented yet" in bad.stderr
