"""The operator's summary: the report's first screen, limits with their status, exit 3 on a
breach; every number checked against the results store with plain NumPy."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from gpu_risk import store


def cli(*args):
    return subprocess.run([sys.executable, "-m", "gpu_risk.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The demo's families over a small synthetic store, with limits the data breaches."""
    from conftest import synthetic_store

    out = tmp_path_factory.mktemp("operator")
    data = synthetic_store(out / "data", accounts=2000, snapshots_per_day=2000, levels=5)
    cfg = {"name": "ops", "stores": {k: data[k] for k in ("book", "positions", "market")},
           "families": ["summary", "imbalance", "liquidation", "stress", "cascade"],
           "output": str(out / "results.zarr"), "report": str(out / "report.html"), "scheduler": "sync",
           "imbalance": {"bucket": "1min"}, "cascade": {"every": "30min"},
           "limits": {"watch_ratio": 1.2, "top_accounts": 5, "accounts_below_1": {"max": 10_000},
                      "accounts_below_watch": {"max": 0},
                      "shortfall": [{"shock": -0.2, "max": 1e15, "warn": 1e14}]}}
    wf = out / "wf.yaml"
    wf.write_text(yaml.safe_dump(cfg))
    done = cli("run", wf, "--json")
    return {"dir": out, "wf": wf, "cfg": cfg, "done": done, "days": data["days"]}


def test_a_breached_limit_exits_3_and_is_listed_in_json(run):
    done = run["done"]
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    tree = store.open_results(run["dir"] / "results.zarr")
    last = tree[run["days"][-1]]["liquidation"].to_dataset()
    near = int((last.collateral_ratio.values < 1.2).sum())
    assert near > 0  # the data does breach the limit of 0
    assert summary["breached"] == ["accounts_below_watch"]
    status = {c["limit"]: (c["value"], c["status"]) for c in summary["summary"]["limits"]}
    assert status["accounts_below_watch"] == (near, "red")
    assert status["accounts_below_1"] == (int((last.collateral_ratio.values < 1).sum()), "green")
    shortfall = tree[run["days"][-1]]["stress"].to_dataset().shortfall
    at = float(shortfall.sel(price_shock=-0.2, method="nearest").max())
    assert status["shortfall at -20 %"] == (pytest.approx(at, rel=1e-12), "green")
    assert "limit breached: accounts_below_watch" in " ".join(done.stderr.split())
    # the report applies the limits the run recorded: the same status, the same exit
    again = cli("report", run["dir"] / "results.zarr", "--out", run["dir"] / "r2.html", "--json")
    assert again.returncode == 3 and json.loads(again.stdout)["summary"]["breached"] == ["accounts_below_watch"]
    # raised limits: nothing is recomputed, nothing is breached, exit 0
    cfg = dict(run["cfg"], limits={"accounts_below_watch": {"max": 1e9}})
    (run["dir"] / "wf2.yaml").write_text(yaml.safe_dump(cfg))
    calm = cli("run", run["dir"] / "wf2.yaml", "--json")
    assert calm.returncode == 0, calm.stderr
    assert json.loads(calm.stdout)["computed"] == [] and json.loads(calm.stdout)["breached"] == []
    assert cli("run", run["wf"]).returncode == 3  # the module's limits (and report) back for the other tests


def test_the_first_screen_states_the_accounts_below_1_and_the_largest_at_risk(run):
    page = (run["dir"] / "report.html").read_text()
    first_screen = page[:page.index("<img")]  # everything before the first figure
    tree = store.open_results(run["dir"] / "results.zarr")
    liq = tree[run["days"][-1]]["liquidation"].to_dataset()
    ratio = liq.collateral_ratio.values
    below, near = int((ratio < 1).sum()), int((ratio < 1.2).sum())
    assert re.search(rf"<b>{below:,}</b> account\(s\) below collateral ratio 1", first_screen)
    assert f"<b>{near:,}</b> below 1.2" in first_screen
    # the accounts at risk: below the watch ratio, largest gross exposure first (top 5)
    at_risk = np.flatnonzero(ratio < 1.2)
    expected = at_risk[np.argsort(-liq.gross_exposure.values[at_risk], kind="stable")][:5]
    table = first_screen[first_screen.index("Accounts at risk"):].split("</table>")[0]
    rows = re.findall(r"<tr><td>(\d+)</td>(.*?)</tr>", table)
    assert [int(a) for a, _ in rows] == [int(liq.account.values[i]) for i in expected]
    for (_, cells), i in zip(rows, expected):
        values = re.findall(r"<td>(.*?)</td>", cells)
        moves = [s for s in (liq.liquidation_shock_down.values[i], liq.liquidation_shock_up.values[i])
                 if np.isfinite(s)]
        if ratio[i] < 1:
            assert values[1] == "now (below 1)"
        else:
            assert values[1] == f"{100 * min(moves, key=abs):+.2f}"
        assert values[-1] == f"{liq.gross_exposure.values[i]:,.0f}"  # money in whole units
    # the limits' status is on the first screen too, with the breach in red
    assert "accounts_below_watch" in first_screen and ">red<" in first_screen


def test_a_limit_that_does_not_fit_the_grid_is_one_line(run):
    cfg = dict(run["cfg"], limits={"shortfall": [{"shock": -0.33, "max": 1}]})
    (run["dir"] / "wf3.yaml").write_text(yaml.safe_dump(cfg))
    done = cli("run", run["dir"] / "wf3.yaml")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "price shock -0.33 is not on the stress grid" in " ".join(done.stderr.split())
    bad = dict(run["cfg"], limits={"accounts_below_1": {"max": 1, "warn": 5}})
    (run["dir"] / "wf4.yaml").write_text(yaml.safe_dump(bad))
    done = cli("run", run["dir"] / "wf4.yaml")
    assert done.returncode == 2 and "warn (5) is above max (1)" in done.stderr
    assert "pydantic" not in done.stderr and "Traceback" not in done.stderr
