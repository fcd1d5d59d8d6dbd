"""The sweep launcher presets on the real engines, run on this machine as docs/sweeps.md writes them: a single-node
SLURM (Debian's slurmctld, slurmd and munge) and a Ray cluster started with ``ray start --head``. Slow: each
starts its engine and runs a 3-job seeds sweep (``-m slow``)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR, ROOT
from zfexp.sweep_results.summarize import summarize

pytestmark = pytest.mark.slow

SLURM_SWEEP = ("python train.py -m sweep=seeds experiment=quickstart callbacks=default logger=csv trainer.max_epochs=1 "
               "data.subset_size=1000 hydra/launcher=slurm hydra.launcher.gpus_per_node=0 "
               "hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=4")
RAY_SWEEP = ("python train.py -m sweep=seeds experiment=quickstart callbacks=default logger=csv trainer.max_epochs=1 "
             "data.subset_size=1000 hydra/launcher=ray hydra.launcher.ray.init.address=auto")
SLURM_PACKAGES = {"slurmctld": "slurmctld", "slurmd": "slurmd", "munged": "munge", "sbatch": "slurm-client"}


def run_documented_sweep(command: str, log_dir: Path, env: dict[str, str] | None = None,
                         extra: list[str] = ()) -> subprocess.CompletedProcess:
    assert command in (ROOT / "docs" / "sweeps.md").read_text()  # the command a user reads
    argv = [sys.executable, *shlex.split(command)[1:], *extra, f"paths.log_dir={log_dir}",
            f"paths.data_dir={DATA_DIR}"]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def check_seeds_sweep(log_dir: Path) -> None:
    """Every job of the 3-seed sweep completed, and the summary gives one row with mean +- std over 3."""
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2"]
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs"] == 1, metrics
    (row,) = summarize(sweep)
    assert row["n"] == 3 and row["val top-1 std"] is not None


def wait_for(check, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {seconds} s")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node SLURM cluster of this machine, on ports of its own; its ``SLURM_CONF`` for the commands."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("a single-node SLURM is set up with Debian's packages, as root")
    missing = [package for command, package in SLURM_PACKAGES.items() if not shutil.which(command)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
        if any(not shutil.which(command) for command in SLURM_PACKAGES):
            pytest.skip(f"apt-get could not install {missing}")
    state = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    memory_mb = int(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 * 0.8)
    conf = state / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=zfexp", f"SlurmctldHost={host}", "SlurmctldPort=16817", "SlurmdPort=16818",
        "AuthType=auth/munge", "ProctrackType=proctrack/linuxproc", "ReturnToService=2", "SlurmUser=root",
        f"SlurmctldPidFile={state}/slurmctld.pid", f"SlurmdPidFile={state}/slurmd.pid",
        f"SlurmdSpoolDir={state}/slurmd", f"StateSaveLocation={state}/state",
        f"SlurmctldLogFile={state}/slurmctld.log", f"SlurmdLogFile={state}/slurmd.log",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
        "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none", f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    munge_dir = Path("/run/munge")
    munge_dir.mkdir(exist_ok=True)
    shutil.chown(munge_dir, "munge", "munge")
    subprocess.run(["munged", "--force"], capture_output=True)  # a running munged refuses a second: fine
    for daemon in ("slurmctld", "slurmd"):
        subprocess.run([daemon], env=env, check=True, capture_output=True)

    def idle() -> bool:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
        return "idle" in nodes
    try:
        wait_for(idle, 60, "the SLURM node coming up")
        yield {"SLURM_CONF": str(conf)}
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        for daemon in ("slurmd", "slurmctld"):
            pid_file = state / f"{daemon}.pid"
            if pid_file.exists():
                subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)


def test_the_slurm_preset_runs_a_seeds_sweep_as_a_job_array(slurm, tmp_path):
    done = run_documented_sweep(SLURM_SWEEP, tmp_path / "logs", slurm)
    assert done.returncode == 0, done.stderr[-3000:]
    check_seeds_sweep(tmp_path / "logs")
    # A cluster without accounting: submitit's failed sacct polls are said once, not every few seconds.
    output = done.stdout + done.stderr
    assert "Call #1 - Bypassing sacct error" in output and "Call #2 - Bypassing sacct error" not in output


SLURM_DDP = ("python train.py -m experiment=quickstart trainer=ddp trainer.accelerator=cpu trainer.devices=2 "
             "hydra/launcher=slurm hydra.launcher.tasks_per_node=2 hydra.launcher.gpus_per_node=0 "
             "hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=4")


def test_the_slurm_preset_runs_ddp_as_two_tasks_of_one_job(slurm, tmp_path):
    """One job, two SLURM tasks (Lightning's SLURM environment: a process each), on the CPU: the command of
    docs/sweeps.md with a short run."""
    done = run_documented_sweep(SLURM_DDP, tmp_path / "logs", slurm, extra=["trainer.max_epochs=1",
                                                                           "data.subset_size=256", "callbacks=default",
                                                                           "logger=csv"])
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 1, metrics
    assert len(list(sweep.glob(".submitit/**/*_log.out"))) == 2  # a log per task: two processes trained


@pytest.fixture
def ray_head():
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        pytest.skip("needs the [ray] extra")
    started = subprocess.run([str(ray), "start", "--head", "--num-cpus=2", "--include-dashboard=false"],
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=300)


def test_the_ray_preset_runs_a_seeds_sweep_on_a_running_ray_cluster(ray_head, tmp_path):
    done = run_documented_sweep(RAY_SWEEP, tmp_path / "logs")
    assert done.returncode == 0, done.stderr[-3000:]
    check_seeds_sweep(tmp_path / "logs")
