"""The family registry: a family defined outside the package runs through `gpu-risk run`."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gpu_risk.families import Family, compute_order, families, register_family, unregister_family

PLUGIN = textwrap.dedent('''
    """A toy family: each instrument's gross notional, sum over accounts of |position| x mark x scale."""
    import html

    import xarray as xr
    from pydantic import BaseModel, ConfigDict

    from gpu_risk.families import Family, register_family


    class ToySettings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        scale: float = 1.0


    def gross_notional(ctx):
        pos, market = ctx.inputs["positions"], ctx.inputs["market"]
        mark = market["mark_price"].sel(instrument=pos["instrument"])
        gross = (abs(pos["position"]) * mark).sum("account") * ctx.settings.scale
        return xr.Dataset({"gross_notional": gross})


    def section(results, days):
        ds = results[days[-1]]["toy_gross"].to_dataset()
        cells = "".join(f"<li>{html.escape(str(i))}: {float(v):.6e}</li>"
                        for i, v in zip(ds.instrument.values, ds.gross_notional.values))
        return f"<h2>Toy gross notional</h2><ul>{cells}</ul>"


    register_family(Family("toy_gross", needs=("positions", "market"), compute=gross_notional,
                           settings=ToySettings, report=section))
''')


def test_a_toy_family_from_outside_the_package_is_computed_written_and_reported(tiny_dataset, tmp_path):
    from gpu_risk import store

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_family_plugin.py").write_text(PLUGIN)
    d = tiny_dataset
    wf = tmp_path / "wf.yaml"
    wf.write_text(textwrap.dedent(f"""
        name: toy
        plugins: [toy_family_plugin]
        stores: {{book: {d['book']}, positions: {d['positions']}, market: {d['market']}}}
        families: [liquidation, toy_gross]
        toy_gross: {{scale: 2.0}}
        output: {tmp_path / 'out.zarr'}
        report: {tmp_path / 'report.html'}
        scheduler: sync
        backend: cpu
    """))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'plugins'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-m", "gpu_risk.cli", "run", str(wf), "--json"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["computed"] == d["days"]

    results = store.open_results(tmp_path / "out.zarr")
    page = (tmp_path / "report.html").read_text()
    assert "Toy gross notional" in page and "Liquidation" in page
    for day in d["days"]:
        got = results[day]["toy_gross"].to_dataset()
        market = store.open_market(d["market"], day)
        pos = store.open_positions(d["positions"], day, market=market).compute()
        marks = dict(zip(market.instrument.values.astype(str), market.mark_price.values))
        # reference: a plain loop over accounts
        for j, inst in enumerate(pos.instrument.values.astype(str)):
            expect = 0.0
            for a in range(pos.sizes["account"]):
                expect += abs(float(pos.position.values[a, j])) * marks[inst]
            np.testing.assert_allclose(float(got.gross_notional.sel(instrument=inst)), 2.0 * expect, rtol=1e-12)
            if day == d["days"][-1]:
                assert f"{inst}: {2.0 * expect:.6e}" in page

    # the same family from the command line alone
    one = subprocess.run([sys.executable, "-m", "gpu_risk.cli", "compute", "toy_gross", "--plugin",
                          "toy_family_plugin", "--set", "scale=2.0", "--positions", d["positions"],
                          "--market", d["market"], "--out", str(tmp_path / "one.zarr"), "--scheduler", "sync",
                          "--json"], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    alone = store.open_results(tmp_path / "one.zarr")
    for day in d["days"]:
        np.testing.assert_array_equal(alone[day]["toy_gross"]["gross_notional"].values,
                                      results[day]["toy_gross"]["gross_notional"].values)
    bad = subprocess.run([sys.executable, "-m", "gpu_risk.cli", "compute", "toy_gross", "--set", "scale",
                          "--positions", d["positions"], "--market", d["market"], "--out", str(tmp_path / "x.zarr")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr

    # a re-run with other settings recomputes the toy family only
    wf.write_text(wf.read_text().replace("scale: 2.0", "scale: 3.0"))
    again = subprocess.run([sys.executable, "-m", "gpu_risk.cli", "run", str(wf), "--json"],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["computed"] == d["days"]
    computing = [line for line in again.stderr.splitlines() if "computing" in line]
    assert len(computing) == len(d["days"]) and all(line.split("computing")[1].strip() == "toy_gross"
                                                    for line in computing), again.stderr


def test_unknown_plugins_settings_and_names_are_refused(tmp_path):
    from pydantic import ValidationError

    from gpu_risk.workflow import WorkflowConfig

    base = {"stores": {"positions": "p", "market": "m"}, "output": "o", "families": ["liquidation"]}
    with pytest.raises(ValidationError, match="could not be imported"):
        WorkflowConfig.model_validate({**base, "plugins": ["no_such_module_here"]})
    with pytest.raises(ValidationError, match="takes no settings"):
        WorkflowConfig.model_validate({**base, "liquidation": {"x": 1}})
    with pytest.raises(ValidationError, match="unknown family"):
        WorkflowConfig.model_validate({**base, "families": ["nope"]})
    with pytest.raises(ValueError, match="workflow setting"):
        register_family(Family("output", needs=(), compute=lambda ctx: None))
    with pytest.raises(ValueError, match="already registered"):
        register_family(Family("stress", needs=(), compute=lambda ctx: None))
    with pytest.raises(ValueError, match="unknown inputs"):
        Family("x", needs=("prices",), compute=lambda ctx: None)


def test_families_run_after_the_families_they_use():
    assert list(families())[:5] == ["summary", "imbalance", "liquidation", "stress", "cascade"]
    order = compute_order(["cascade", "stress", "liquidation"])
    assert sorted(order) == ["cascade", "liquidation", "stress"]
    assert order.index("liquidation") < order.index("cascade")
    register_family(Family("loop_a", needs=(), compute=lambda ctx: None, uses=("loop_b",)))
    register_family(Family("loop_b", needs=(), compute=lambda ctx: None, uses=("loop_a",)))
    try:
        with pytest.raises(ValueError, match="cycle"):
            compute_order(["loop_a", "loop_b"])
    finally:
        unregister_family("loop_a")
        unregister_family("loop_b")
