"""A one-node SLURM cluster on this machine, for the cluster tests: munged, slurmctld and
slurmd from Debian's packages (slurm-wlm, munge), with a private configuration, ports and
state directory. ``start`` returns the environment to use, or why it cannot start."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "sbatch", "sinfo", "munged", "munge")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_running() -> bool:
    try:
        done = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _start_munge() -> str | None:
    if _munge_running():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        return "no /etc/munge/munge.key (install munge: apt-get install munge)"
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], capture_output=True, timeout=30)
    for _ in range(20):
        if _munge_running():
            return None
        time.sleep(0.25)
    return "munged did not start (munge -n | unmunge fails)"


class SlurmNode:
    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.procs: list[subprocess.Popen] = []
        self.env: dict[str, str] = {}

    def start(self) -> str | None:
        """None when the node is up (``self.env`` holds SLURM_CONF), else the reason."""
        missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
        if missing:
            return f"SLURM is not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)"
        if os.geteuid() != 0:
            return "starting slurmctld and slurmd needs root"
        why = _start_munge()
        if why:
            return why
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        cpus = len(os.sched_getaffinity(0))
        conf = self.dir / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=gpurisktest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            f"StateSaveLocation={self.dir}/state", f"SlurmdSpoolDir={self.dir}/spool",
            f"SlurmctldPidFile={self.dir}/slurmctld.pid", f"SlurmdPidFile={self.dir}/slurmd.pid",
            f"SlurmctldLogFile={self.dir}/log/slurmctld.log", f"SlurmdLogFile={self.dir}/log/slurmd.log",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "MpiDefault=none", "SwitchType=switch/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "ReturnToService=2", "SlurmdTimeout=30", "InactiveLimit=0", "MinJobAge=30", "KillWait=5",
            f"NodeName={host} CPUs={cpus} RealMemory=16000 State=UNKNOWN",
            "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4", ""]))
        self.env = {**os.environ, "SLURM_CONF": str(conf)}
        for daemon, extra in (("slurmctld", ["-i"]), ("slurmd", [])):
            log = open(self.dir / "log" / f"{daemon}.out", "w")
            self.procs.append(subprocess.Popen([daemon, "-D", *extra], env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip() in ("idle", "mixed", "allocated"):
                return None
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.5)
        logs = " | ".join((self.dir / "log" / f).read_text()[-300:] for f in ("slurmctld.out", "slurmd.out"))
        self.stop()
        return f"slurmctld/slurmd did not come up: {logs}"

    def jobs(self) -> list[str]:
        done = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True)
        return done.stdout.split("\n")[:-1] if done.returncode == 0 else []

    def stop(self) -> None:
        if self.env:
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True)
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()
