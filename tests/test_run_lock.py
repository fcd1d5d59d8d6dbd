"""A run in progress is never resumed by ``ckpt_path=last``: the training process holds its run's lock; ``last``
passes over the run with a warning naming it, and once that process is gone (however it ended) the lock blocks
nothing."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time

from tests.conftest import ROOT
from zfexp.checkpoint_files import lock_holder, resolve_ckpt_path


def test_last_passes_over_a_run_still_training_and_not_over_one_whose_process_is_gone(tiny_checkpoint, tmp_path,
                                                                                          caplog):
    runs = tmp_path / "logs" / "train" / "runs"
    older, training = runs / "older", runs / "training"
    for run in (older, training):
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(tiny_checkpoint, run / "checkpoints" / "last.ckpt")
        time.sleep(0.05)  # the training run's checkpoint is the newest
    # Another process trains `training`: it holds the lock as train() does around fit.
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from pathlib import Path
from zfexp.checkpoint_files import training_lock
with training_lock(Path({str(training)!r})):
    print("held", flush=True)
    time.sleep(120)
"""], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(training).startswith(f"pid {holder.pid} on ")
        with caplog.at_level(logging.WARNING, logger="zfexp.checkpoint_files"):
            chosen = resolve_ckpt_path("last", str(tmp_path / "logs"), "train", runs / "new")
        assert chosen == str(older / "checkpoints" / "last.ckpt")
        assert f"passes over {training}: it is still training (pid {holder.pid} on " in caplog.text
    finally:
        holder.kill()  # as a crash or SIGKILL would end it: no code of its own runs
        holder.wait()
    assert lock_holder(training) is None  # the lock file is still there, its lock gone with its process
    assert (training / "training.lock").is_file()
    assert resolve_ckpt_path("last", str(tmp_path / "logs"), "train", runs / "new") == str(
        training / "checkpoints" / "last.ckpt")
