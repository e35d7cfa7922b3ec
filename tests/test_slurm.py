"""A study on two SLURM-launched workers (`--scheduler slurm`, dask-jobqueue) against the
same study on a LocalCluster: identical results. Needs a one-node SLURM on this machine
(tests/slurm_node.py starts it: slurm-wlm and munge from Debian's packages, as root);
`make test-cluster` runs it, and it skips with the reason where SLURM cannot start."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gpu_risk import store
from gpu_risk.cluster import ClusterConfig
from gpu_risk.study import open_study
from gpu_risk.synth import SynthConfig, synth
from gpu_risk.workflow import load_config, run_workflow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_node import SlurmNode

pytestmark = pytest.mark.slurm
WORKFLOW = Path(__file__).resolve().parents[1] / "workflows/study.yaml"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    node = SlurmNode(tmp_path_factory.mktemp("slurm"))
    why = node.start()
    if why:
        pytest.skip(why)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = node.env["SLURM_CONF"]  # sbatch, squeue, scancel of dask-jobqueue read it
    yield node
    node.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def _study(data: Path, out: Path, scheduler: str, cluster: ClusterConfig | None = None):
    stores = {k: data / f"{k}.zarr" for k in ("book", "positions", "market", "market_history")}
    cfg = load_config(WORKFLOW, {"stores": stores, "output": out / "results.zarr", "scheduler": scheduler})
    cfg = cfg.model_copy(update={"cluster": cluster, "study": cfg.study.model_copy(update={
        "output": out / "study.zarr", "report": out / "study.html"})})
    return run_workflow(cfg)


def test_a_study_on_slurm_workers_equals_the_local_run(slurm, tmp_path):
    data = tmp_path / "data"
    synth(SynthConfig(out=str(data), days=2, instruments=2, accounts=500, snapshots_per_day=4_000,
                      market_history=True))
    local = _study(data, tmp_path / "local", "local")
    logs = tmp_path / "jobs"
    cluster = ClusterConfig(jobs=2, cores=1, memory="2GB", walltime="00:20:00", log_directory=str(logs),
                            local_directory=str(tmp_path / "spill"), start_timeout=180)
    on_slurm = _study(data, tmp_path / "slurm", "slurm", cluster)
    assert on_slurm["computed"] == local["computed"] == ["2026-01-05", "2026-01-06"]
    # the work ran in SLURM jobs: two were submitted, and each started a Dask worker
    outputs = sorted(logs.glob("*.err")) + sorted(logs.glob("*.out"))
    assert len({p.stem for p in outputs}) == 2, outputs
    assert all("Starting Worker" in "".join(p.read_text() for p in outputs if p.stem == stem)
               for stem in {p.stem for p in outputs})
    a, b = store.open_results(tmp_path / "local/results.zarr"), store.open_results(tmp_path / "slurm/results.zarr")
    for day in local["computed"]:
        assert sorted(a[day].children) == sorted(b[day].children)
        for family in a[day].children:
            left, right = a[day][family].to_dataset().load(), b[day][family].to_dataset().load()
            for name in left.data_vars:
                np.testing.assert_array_equal(left[name].values, right[name].values, err_msg=f"{day}/{family}/{name}")
    study_local, study_slurm = open_study(tmp_path / "local/study.zarr").load(), open_study(
        tmp_path / "slurm/study.zarr").load()
    xr.testing.assert_equal(study_local, study_slurm)  # values, coordinates, names
    assert {k: v for k, v in study_local.attrs.items() if k != "results"} == {
        k: v for k, v in study_slurm.attrs.items() if k != "results"}  # but the results store's path
    # the jobs end with the run: nothing left queued
    assert not [j for j in slurm.jobs() if j.strip()], slurm.jobs()


def test_slurm_workers_that_never_start_are_one_clear_error(slurm, tmp_path):
    """A job that cannot run (more memory than the node has) never starts a worker: one
    line after the start timeout, and the jobs are cancelled."""
    data = tmp_path / "data"
    synth(SynthConfig(out=str(data), days=1, instruments=1, accounts=100, snapshots_per_day=1_000,
                      market_history=True))
    cluster = ClusterConfig(jobs=1, cores=1, memory="900GB", start_timeout=15, log_directory=str(tmp_path / "j"))
    done = subprocess.run([sys.executable, "-c", (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests');"
        "from test_slurm import _study; from gpu_risk.cluster import ClusterConfig;"
        f"_study(Path({str(data)!r}), Path({str(tmp_path / 'out')!r}), 'slurm', "
        f"ClusterConfig.model_validate_json({cluster.model_dump_json()!r}))")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert done.returncode != 0
    said = done.stderr
    assert "0 of 1 SLURM workers joined within 15 s" in said or "cannot start a SLURM cluster" in said, said[-1500:]
    assert not [j for j in slurm.jobs() if j.strip()], slurm.jobs()


def test_slurm_jobs_cancelled_mid_run_are_one_clear_error(slurm, tmp_path):
    """The worker jobs end while the run computes (walltime, scancel, a lost node): after
    GPU_RISK_NO_WORKER_TIMEOUT without a worker the run stops with one line, days already
    complete stay, and no job is left."""
    import time

    data = tmp_path / "data"
    synth(SynthConfig(out=str(data), days=3, instruments=2, accounts=500, snapshots_per_day=20_000,
                      market_history=True))
    stores = [f"--{k.replace('_', '-')}={data / (k + '.zarr')}" for k in ("book", "positions", "market",
                                                                         "market_history")]
    config = tmp_path / "study.yaml"
    config.write_text(WORKFLOW.read_text().replace("scheduler: auto", "scheduler: slurm\ncluster:\n  jobs: 2\n"
                                                   f"  memory: 2GB\n  log_directory: {tmp_path / 'jobs'}\n"))
    env = {**os.environ, "GPU_RISK_NO_WORKER_TIMEOUT": "5"}
    run = subprocess.Popen([sys.executable, "-m", "gpu_risk.cli", "run", str(config), *stores,
                            "--output", str(tmp_path / "results.zarr")], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []
    for line in run.stderr:  # the run says where it computes once every worker joined
        said.append(line)
        if "scheduler: SLURMCluster" in line:
            break
    time.sleep(1)  # the first day is under way
    subprocess.run(["scancel", "--user", "root"], env=slurm.env, check=True)
    _, rest = run.communicate(timeout=180)
    err = "".join(said) + rest
    assert run.returncode == 2, err[-2000:]
    last = [line for line in err.strip().splitlines() if line.strip()][-1]
    # lost while a task ran, or found with no worker by the watchdog: either says what happened
    assert ("the SLURM workers were lost while computing" in last
            or "the SLURM cluster's scheduler has had no worker for 5 s" in last), err[-2000:]
    assert "Traceback" not in err
    assert not [j for j in slurm.jobs() if j.strip()], slurm.jobs()
