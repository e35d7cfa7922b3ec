"""The batch spine: config validation, atomic days, kill-and-resume, every scheduler."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from pydantic import ValidationError

from gpu_risk import store
from gpu_risk.workflow import WorkflowConfig, load_config, run_workflow

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path, data, **overrides) -> Path:
    cfg = {"name": "test", "stores": {k: data[k] for k in ("book", "positions", "market")},
           "families": ["summary", "imbalance", "liquidation", "stress", "cascade"], "imbalance": {"bucket": "10s"},
           "stress": {"price_shocks": [-0.3, 0.0, 0.3], "vol_shocks": [0.0, 0.1]},
           "cascade": {"every": "30min", "initial_shocks": [-0.1, -0.02, 0.02, 0.1]},
           "output": str(tmp_path / "results.zarr"),
           "report": str(tmp_path / "report.html"), "scheduler": "sync", "backend": "cpu"}
    cfg.update(overrides)
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def results_of(path) -> dict:
    tree = store.open_results(path)
    return {f"{day}/{fam}": tree[day][fam].to_dataset().load()
            for day in tree.children for fam in tree[day].children}


def assert_same_results(a, b):
    ra, rb = results_of(a), results_of(b)
    assert sorted(ra) == sorted(rb) and ra
    for key in ra:
        xr.testing.assert_identical(ra[key], rb[key])


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """An uninterrupted run with the synchronous scheduler."""
    tmp = tmp_path_factory.mktemp("reference")
    summary = run_workflow(load_config(write_config(tmp, tiny_dataset)))
    assert summary["computed"] == tiny_dataset["days"]
    return tmp / "results.zarr"


def test_config_is_validated(tiny_dataset, tmp_path):
    base = yaml.safe_load(write_config(tmp_path, tiny_dataset).read_text())
    for bad, match in (({"families": ["risk"]}, "unknown family"),
                       ({"cascade": {"depth_extrapolation": "deep"}}, "depth_extrapolation"),
                       ({"scheduler": "sync", "typo": 1}, "Extra inputs"),
                       ({"dates": ["2026-01-05"], "start": "2026-01-05"}, "either dates or start"),
                       ({"backend": "tpu"}, "backend"),
                       ({"stress": {"vol_shocks": [0.0], "haircut_shocks": [0.1]}}, "exactly one of")):
        with pytest.raises(ValidationError, match=match):
            WorkflowConfig.model_validate(base | bad)


def test_report_and_rerun_skips_complete_days(reference, tiny_dataset, tmp_path):
    shutil.copytree(reference, tmp_path / "results.zarr")
    summary = run_workflow(load_config(write_config(tmp_path, tiny_dataset)))
    assert summary["computed"] == [] and summary["skipped"] == tiny_dataset["days"]
    page = (tmp_path / "report.html").read_text()
    for inst in tiny_dataset["instruments"]:
        assert inst in page
    assert "Open interest by instrument" in page and "data:image/png;base64" in page
    assert "Liquidation cascades" in page and "Most fragile times" in page and "Fragility by time of day" in page
    assert "Imbalance grids" in page and "Mid-price change on level-1 OFI" in page
    assert "Liquidation thresholds" in page and "closest to liquidation" in page
    assert "Stress surfaces" in page and "Worst scenario" in page and "Shortfall change since" in page


def test_day_by_day_grids_tile_the_history_grid(reference, tiny_dataset):
    """The workflow grids each day with the previous day's last snapshot as predecessor:
    concatenated, the days equal one grid of the whole store."""
    from gpu_risk.imbalance import imbalance_grid

    results = results_of(reference)
    days = xr.concat([results[f"{d}/imbalance"] for d in tiny_dataset["days"]], "time")
    whole = imbalance_grid(store.open_book(tiny_dataset["book"]), "10s",
                           end=np.datetime64(tiny_dataset["days"][-1]) + np.timedelta64(1, "D")).compute()
    whole = whole.sel(time=slice(np.datetime64(tiny_dataset["days"][0]) + np.timedelta64(1, "ns"), None))
    days = days.drop_attrs().reindex(time=whole.time)  # the first day's axis starts at midnight
    xr.testing.assert_identical(days, whole.drop_attrs())


def test_date_selection(tiny_dataset, tmp_path):
    day = tiny_dataset["days"][1]
    summary = run_workflow(load_config(write_config(tmp_path, tiny_dataset, start=day)))
    assert summary["computed"] == [day]


def _cli(args, env=None, check=True):
    return subprocess.run([sys.executable, "-m", "gpu_risk.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, check=check)


@pytest.mark.parametrize("killed_day", [1, 2])
def test_killed_run_resumes_to_the_same_output(reference, tiny_dataset, tmp_path, killed_day):
    """SIGKILL mid-batch (after a day's families are written, before the day is marked
    complete), then re-run: same output as the uninterrupted run, nothing lost."""
    cfg = write_config(tmp_path, tiny_dataset)
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"),
                             "gpu_risk.stores.results.mark_complete", str(killed_day), "run", str(cfg)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    done_before = store.results_days(tmp_path / "results.zarr")
    assert len(done_before) == killed_day - 1  # the killed day is not visible
    rerun = _cli(["run", str(cfg), "--json"])
    assert rerun.returncode == 0, rerun.stderr
    assert_same_results(reference, tmp_path / "results.zarr")


def test_same_results_from_a_book_stored_as_instrument_arrays(reference, tiny_dataset, tmp_path):
    """The whole workflow on the book migrated to the instrument-arrays layout: every
    family's results identical to those from the day groups."""
    from gpu_risk.stores.book_arrays import migrate_book

    book = tmp_path / "book.zarr"
    shutil.copytree(tiny_dataset["book"], book)
    migrate_book(book, chunk_rows=2048)
    data = {**tiny_dataset, "book": str(book)}
    summary = run_workflow(load_config(write_config(tmp_path, data)))
    assert summary["computed"] == tiny_dataset["days"]
    assert_same_results(reference, tmp_path / "results.zarr")


@pytest.mark.parametrize("scheduler", ["threads", "local"])
def test_same_results_on_every_scheduler(reference, tiny_dataset, tmp_path, scheduler):
    cfg = load_config(write_config(tmp_path, tiny_dataset, scheduler=scheduler))
    run_workflow(cfg)
    assert_same_results(reference, tmp_path / "results.zarr")


def test_same_results_on_a_separately_started_scheduler(reference, tiny_dataset, tmp_path):
    """`dask scheduler` + `dask worker` started by hand on loopback, then ADDRESS."""
    bindir = Path(sys.executable).parent
    dask_cli = [str(bindir / "dask")] if (bindir / "dask").exists() else [sys.executable, "-m", "dask"]
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        procs.append(subprocess.Popen([*dask_cli, "worker", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                                       "--nthreads", "2", "--dashboard-address", "127.0.0.1:0",
                                       "--memory-limit", "2GB"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        import json

        from distributed import Client

        address = json.loads(sched_file.read_text())["address"]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        run_workflow(load_config(write_config(tmp_path, tiny_dataset, scheduler=address)))
        assert_same_results(reference, tmp_path / "results.zarr")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_flag_mode_runs_on_bad_rows_and_counts_them(tiny_dataset, tmp_path):
    import zarr

    data = dict(tiny_dataset)
    shutil.copytree(tiny_dataset["positions"], tmp_path / "positions.zarr")
    data["positions"] = str(tmp_path / "positions.zarr")
    day = tiny_dataset["days"][0]
    node = zarr.open_group(data["positions"], path=day, mode="r+")
    mode = node["margin_mode"][:]  # flag codes on disk (0 cross, 1 isolated)
    mode[[4, 9]] = 7  # a code outside flag_values: neither cross nor isolated
    node["margin_mode"][:] = mode
    with pytest.raises(Exception, match="margin_mode"):
        run_workflow(load_config(write_config(tmp_path, data, dates=[day])))
    run_workflow(load_config(write_config(tmp_path, data, dates=[day], on_bad_rows="flag")))
    out = store.open_results(tmp_path / "results.zarr")[day]["positions_summary"].to_dataset()
    assert int(out.n_excluded) == 2


def test_stage_breakdown_adds_up_and_is_recorded(tiny_dataset, tmp_path):
    """Every day reports where its time went; the parts are real measurements that add up."""
    summary = run_workflow(load_config(write_config(tmp_path, tiny_dataset, scheduler="threads")))
    for day in summary["computed"]:
        st = summary["stages"][day]
        assert set(st["wall"]) == {"open_validate", "graph", "compute_write"}
        tasks = st["task_seconds"]
        assert tasks["read_decode"] > 0 and tasks["encode_write"] > 0 and st["threads"] >= 1
        # every family's kernel ran, and its time is counted
        for kernel in ("imbalance_block", "liquidation", "stress", "cascade", "open_interest"):
            assert st["kernels"].get(kernel, 0) > 0, kernel
        assert tasks["kernel"] == pytest.approx(sum(st["kernels"].values()), abs=1e-3)
        # the breakdown covers the day's wall time (each part measured, none negative)
        parts = st["breakdown"]
        assert min(parts.values()) >= 0
        assert sum(parts.values()) == pytest.approx(sum(st["wall"].values()), rel=0.25, abs=0.05)
        assert summary["seconds"][day] >= sum(st["wall"].values())
    assert store.run_stages(tmp_path / "results.zarr") == summary["stages"]


def test_performance_report_needs_a_distributed_scheduler(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="distributed scheduler"):
        run_workflow(load_config(write_config(tmp_path, tiny_dataset, scheduler="threads")),
                     performance_report=tmp_path / "dask.html")


@pytest.mark.cupy
def test_gpu_batch_runs_every_cuda_kernel_and_matches_the_cpu(tiny_dataset, tmp_path, reference):
    """--backend gpu: each family's CUDA kernel runs (its timer says so) and the results
    equal the CPU run's to the kernels' tolerances."""
    pytest.importorskip("cupy")
    from gpu_risk.backend import gpu_available

    if not gpu_available()[0]:
        pytest.skip("no CUDA device")
    summary = run_workflow(load_config(write_config(tmp_path, tiny_dataset, backend="gpu")))
    ran = set().union(*(st["kernels"] for st in summary["stages"].values()))
    for kernel in ("imbalance_block[gpu]", "liquidation[gpu]", "stress[gpu]", "cascade[gpu]"):
        assert kernel in ran, (kernel, ran)
    ra, rb = results_of(reference), results_of(tmp_path / "results.zarr")
    assert sorted(ra) == sorted(rb)
    for key in ra:
        xr.testing.assert_allclose(ra[key], rb[key], rtol=1e-9, atol=1e-9)


def _computed(summary):
    return sorted(summary["computed"])


def test_rerun_recomputes_exactly_the_days_whose_settings_or_inputs_changed(tiny_dataset, tmp_path):
    """Results know what made them: same settings and inputs are skipped; another setting
    recomputes every day; a rewritten input day recomputes the days that read it; a family
    missing from a day is computed and the others kept; --redo forces a day."""
    data = dict(tiny_dataset)
    shutil.copytree(tiny_dataset["book"], tmp_path / "book.zarr")
    data["book"] = str(tmp_path / "book.zarr")
    days = tiny_dataset["days"]
    cfg = write_config(tmp_path, data, families=["imbalance", "liquidation"], report=None)
    first = run_workflow(load_config(cfg))
    assert _computed(first) == days
    assert run_workflow(load_config(cfg))["computed"] == []  # nothing changed
    # another setting of one family: every day, that family only
    changed = run_workflow(load_config(cfg, {"imbalance": {"bucket": "30s"}}))
    assert _computed(changed) == days
    grid = store.open_results(tmp_path / "results.zarr")[days[0]]["imbalance"].to_dataset()
    assert pd.Timedelta(grid.attrs["bucket"]) == pd.Timedelta("30s") and grid.attrs["bucket"].startswith("P")
    assert "liquidation" in store.open_results(tmp_path / "results.zarr")[days[0]].children
    # a rewritten input day: that day, and the next (its OFI predecessor came from it)
    inst = sorted(store.book_days(data["book"]))[0]
    day_ds = store.open_day_dataset(data["book"], f"{inst}/{days[0]}").load()
    store.write_book(day_ds, data["book"], inst)
    again = run_workflow(load_config(cfg, {"imbalance": {"bucket": "30s"}}))
    assert _computed(again) == days[:2]
    # a family the days do not hold yet: computed, the others kept
    more = run_workflow(load_config(cfg, {"imbalance": {"bucket": "30s"},
                                          "families": ["imbalance", "liquidation", "stress"]}))
    assert _computed(more) == days
    assert set(store.open_results(tmp_path / "results.zarr")[days[-1]].children) == {
        "imbalance", "liquidation", "stress"}
    forced = run_workflow(load_config(cfg, {"imbalance": {"bucket": "30s"}, "redo": [days[1]]}))
    assert _computed(forced) == [days[1]]


def test_second_writer_is_refused_in_one_line(tiny_dataset, tmp_path):
    """While one run holds a results store, another run on it stops at once with one line
    naming the holder; once the first is done (or killed), the store is free again."""
    cfg = write_config(tmp_path, tiny_dataset, families=["liquidation"], report=None)
    with store.exclusive_writer(tmp_path / "results.zarr"):
        second = _cli(["run", str(cfg)], check=False)
        assert second.returncode == 2
        message = second.stderr.strip()
        assert "is being written by process" in message and "Traceback" not in message
        assert store.results_days(tmp_path / "results.zarr") == []
    assert _cli(["run", str(cfg)]).returncode == 0
    assert store.results_days(tmp_path / "results.zarr") == tiny_dataset["days"]


@pytest.mark.parametrize("trial", range(3))
def test_two_runs_started_together_leave_only_whole_days(tiny_dataset, tmp_path, trial):
    """Two runs on one new output at once: one writes every day whole, the other is refused
    in one line (or, started after the first finished, finds every day current)."""
    cfg = write_config(tmp_path, tiny_dataset, families=["imbalance", "liquidation"], report=None)
    procs = [subprocess.Popen([sys.executable, "-m", "gpu_risk.cli", "run", str(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] in (0, 2), outs
    for p, (_out, err) in zip(procs, outs):
        if p.returncode == 2:
            assert "is being written by" in err and "Traceback" not in err
    tree = store.open_results(tmp_path / "results.zarr")
    assert sorted(tree.children) == tiny_dataset["days"]
    for day in tree.children:
        assert set(tree[day].children) == {"imbalance", "liquidation"}


def test_report_shows_where_the_time_went(tiny_dataset, tmp_path):
    cfg = write_config(tmp_path, tiny_dataset, families=["imbalance", "liquidation"])
    run_workflow(load_config(cfg))
    page = (tmp_path / "report.html").read_text()
    assert "Where the time went" in page and "read + decode" in page and "imbalance_block" in page


def test_two_writers_at_once_twenty_times_leave_only_whole_days(tiny_dataset, tmp_path):
    """Two runs started together on one output, 20 times (threads of one process, for
    speed; the lock is an OS file lock either way): every day marked complete is whole
    (gpu-risk verify finds nothing), and the loser's message is one line."""
    import threading

    from gpu_risk.stores.verify import verify_store

    refused = 0
    for trial in range(20):
        out = tmp_path / f"r{trial}.zarr"
        cfg = load_config(write_config(tmp_path, tiny_dataset, families=["liquidation"], report=None,
                                       output=str(out)))
        errors: list[str] = []
        start = threading.Barrier(2)

        def run(cfg, start, errors):
            start.wait()
            try:
                run_workflow(cfg)
            except RuntimeError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=run, args=(cfg, start, errors)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(errors) <= 1, errors
        for message in errors:
            assert "is being written by" in message and "\n" not in message
        assert store.results_days(out) == tiny_dataset["days"]
        assert verify_store(out)["problems"] == []
        refused += len(errors)
    assert refused >= 10  # the runs did overlap: the lock was what kept the days whole


def test_the_report_opens_with_the_last_days_figures_and_their_change(reference, tiny_dataset):
    """The summary at the top: each figure equals what the results store holds, computed
    here independently with NumPy, and its change since the day before."""
    import re

    page = (reference.parent / "report.html").read_text()
    days = tiny_dataset["days"]
    assert page.index("At a glance") < page.index("<img") and page.index("At a glance") < page.index("Datasets</h2>")
    table = page[page.index("At a glance"):].split("</table>")[0]

    def row(name):
        cells = re.search(r"<tr><td>" + re.escape(name) + r"</td>(.*?)</tr>", table).group(1)
        return re.findall(r"<td>(.*?)</td>", cells)

    tree = store.open_results(reference)
    below = [int((tree[d]["liquidation"]["collateral_ratio"].values < 1).sum()) for d in days]
    assert row("accounts below collateral ratio 1 (liquidatable now)") == [
        f"{below[1]:,}", "unchanged" if below[1] == below[0] else f"{below[1] - below[0]:+,}"]
    worst = [float(tree[d]["stress"]["shortfall"].values.max()) for d in days]
    assert row("worst stress shortfall over the grid (USD)")[0] == f"{worst[1]:,.0f}"
    grid = tree[days[1]]["imbalance"].to_dataset()
    gaps = int(((grid.n_updates.values == 0) & np.isnan(grid.mid_price.values)).sum())
    assert row("imbalance buckets without a current book (gaps)")[0] == f"{gaps:,}"
