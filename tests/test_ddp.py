"""Lightning DDP on two CPU processes (gloo), through train.py as a user runs it: each image is written once, the
evaluation counts every image once whatever the split's size, no step waits for the host and a loss that diverges on
one rank stops every rank with the message, and a run killed mid-epoch resumes to the uninterrupted run's numbers
(``-m slow``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import ROOT, compose_train, train_cmd
from zfexp.divergence import READ_LAG
from zfexp.module import ImageClassifier

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
       "module.channels_last=false", "trainer.enable_progress_bar=false",
       "callbacks.progress_bar=null"]
SMALL = ["experiment=quickstart", "data.num_workers=0", "data.batch_size=64", "trainer.max_epochs=1",
         "model.widths={conv1: 8, conv2: 16, conv3: 16, conv4: 16, conv5: 16, fc6: 32, fc7: 32}"]
NO_FIGURES = ["callbacks.deconv_snapshots=null", "callbacks.top_activations=null", "callbacks.filter_diagnostics=null",
              "callbacks.occlusion_maps=null", "callbacks.invariance_curves=null"]


def run_train(log_dir: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*overrides, f"paths.log_dir={log_dir}"), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def newest_run(log_dir: Path) -> Path:
    return max(log_dir.glob("train/runs/*"), key=lambda p: p.stat().st_mtime)


def test_ddp_writes_each_image_once_and_evaluates_every_image_once(tmp_path):
    # 129 validation and 129 test images: shares of 65 and 64 images, 2 batches on one rank and 1 on the other
    # (DistributedSampler would pad the second share with a repeated image).
    log_dir = tmp_path / "logs"
    done = run_train(log_dir, *SMALL, *NO_FIGURES, *DDP, "data.subset_size=129",
                     "callbacks.deconv_snapshots={epochs: [1], probe_size: 32, layers: [conv1, conv5], "
                     "maps_per_layer: 2, _target_: callbacks.DeconvSnapshots}")
    assert done.returncode == 0, done.stderr[-3000:]
    # Epoch-level losses are reduced over the ranks: Lightning's warning about logging them without it is absent.
    assert "sync_dist" not in done.stdout + done.stderr
    run = newest_run(log_dir)
    assert "_target_: zfexp.ddp.DDPStrategy" in (run / "config.yaml").read_text()
    images = sorted(p.name for p in (run / "images").glob("*.png"))
    assert images == ["deconv_conv1_epoch001.png", "deconv_conv1_evolution.png", "deconv_conv5_epoch001.png",
                      "deconv_conv5_evolution.png"]
    media = list(run.glob("wandb/offline-run-*/files/media/images/**/*.png"))
    assert len(media) == len(images)  # one W&B run, each image logged once
    assert len(list(run.glob("wandb/offline-run-*"))) == 1

    # The same checkpoint evaluated by one process: the same errors and losses.
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = compose_train(tmp_path / "single" / "train" / "runs" / "a", [*SMALL, "data.subset_size=129"])
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       enable_model_summary=False)
    module = ImageClassifier.load_from_checkpoint(metrics["best_checkpoint"])
    val = single.validate(module, datamodule=instantiate(cfg.data, _convert_="all"), verbose=False)[0]
    test = single.test(module, datamodule=instantiate(cfg.data, _convert_="all"), verbose=False)[0]
    for key, value in {**val, **test}.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, metrics[key], value)


def test_the_docs_cpu_command_runs_as_written_and_sync_batchnorm_is_left_to_cuda(tmp_path):
    """docs/sweeps.md's ``python train.py experiment=quickstart trainer=ddp trainer.accelerator=cpu
    trainer.devices=2`` (a slice of the data, one epoch, no figures), with ``trainer.sync_batchnorm=true`` as a
    user coming from the GPUs sets it: SyncBatchNorm refuses CPU modules, so a log line says it is left out."""
    log_dir = tmp_path / "logs"
    done = run_train(log_dir, "experiment=quickstart", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "trainer.sync_batchnorm=true", "trainer.max_epochs=1", "data.subset_size=128", "test=false",
                     *NO_FIGURES)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trainer.sync_batchnorm=true: SyncBatchNorm runs on CUDA only" in done.stdout + done.stderr
    assert (newest_run(log_dir) / "checkpoints" / "last.ckpt").is_file()


def test_no_step_waits_for_the_host_and_a_loss_diverging_on_one_rank_stops_every_rank(tmp_path):
    """Two processes with the default callbacks, logging and progress lines every 2 steps: no step makes a host
    sync (counted as on a GPU: tests.helpers.host_syncs); an infinite loss on rank 1 at step 3 is found on the
    device, its update and those after it skipped on both ranks, and both stop with the message, the weights of
    before step 3 bit-equal."""
    log_dir = tmp_path / "logs"
    start = time.time()
    with_progress = [o for o in DDP if "progress_bar" not in o]
    done = run_train(log_dir, *SMALL, *with_progress, "data.subset_size=1024", "callbacks=default", "logger=csv",
                     "trainer.log_every_n_steps=2", "callbacks.progress_bar.every_n_steps=2",
                     "callbacks.progress_bar.terminal=false",
                     "+callbacks.diverge={_target_: tests.helpers.diverging.InfiniteImagesOnRank, rank: 1, step: 3}",
                     f"+callbacks.weights={{_target_: tests.helpers.diverging.WeightsBeforeStep, step: 3, "
                     f"out: '{tmp_path}/weights{{rank}}.json'}}",
                     f"+callbacks.count_syncs={{_target_: tests.helpers.host_syncs.CountHostSyncs, "
                     f"out: '{tmp_path}/syncs{{rank}}.json'}}",
                     timeout=300)  # had a rank stopped alone, the other would wait in the all-reduce for 30 min
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    message = done.stderr[done.stderr.index("Error: "):]
    assert "train/loss is not finite on 1 of 2 processes at epoch 1, global step 3" in message, message
    run = newest_run(log_dir)
    assert f"the newest checkpoint, {run / 'checkpoints' / 'last.ckpt'} (global step 0)" in message, message
    assert time.time() - start < 240
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "failed" and "NonFiniteLossError" in record["error"]
    for rank in (0, 1):
        weights = json.loads((tmp_path / f"weights{rank}.json").read_text())
        assert weights == {"bit_equal": True, "stopped_at": 3 + READ_LAG, "error": "NonFiniteLossError"}, rank
        counted = json.loads((tmp_path / f"syncs{rank}.json").read_text())
        # Steps 0..5: step 5 starts, reads step 3's record and stops.
        assert counted["per_step"] == [0] * (3 + READ_LAG + 1), counted["found"]


RESUMABLE = [*SMALL, *DDP, "data.subset_size=1024", "data.batch_size=32", "trainer.max_epochs=2",
             "model.dropout=0.5", "trainer.deterministic=true", "callbacks=default", "logger=csv",
             "callbacks.resume_checkpoint.every_n_train_steps=4"]
STEPS_PER_EPOCH = -(-1024 // (32 * 2))  # each rank's share, in batches of 32


@pytest.mark.slow
def test_a_ddp_run_killed_mid_epoch_resumes_to_the_uninterrupted_runs_numbers(tmp_path):
    whole = run_train(tmp_path / "whole", *RESUMABLE)
    assert whole.returncode == 0, whole.stderr[-3000:]
    uninterrupted = json.loads((newest_run(tmp_path / "whole") / "metrics.json").read_text())

    log_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(*RESUMABLE, f"paths.log_dir={log_dir}"), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            steps = [torch.load(p, map_location="cpu", weights_only=True)["global_step"]
                     for p in log_dir.glob("train/runs/*/checkpoints/last_step.ckpt") if _complete(p)]
            if steps and steps[0] > STEPS_PER_EPOCH:  # in the second epoch
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # every rank at once, as a lost machine would
        proc.wait()

    resumed = run_train(log_dir, *RESUMABLE, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((newest_run(log_dir) / "metrics.json").read_text())
    assert Path(metrics["resumed_from"]).name == "last_step.ckpt"
    for key in ("train/top1_err", "train/top5_err", "val/top1_err", "test/top1_err", "global_step", "epochs"):
        assert metrics[key] == uninterrupted[key], (key, metrics[key], uninterrupted[key])
    for key in ("train/loss", "val/loss", "test/loss"):  # sums of the ranks' shares, added in another order
        assert metrics[key] == pytest.approx(uninterrupted[key], rel=1e-6), key


def _complete(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except (RuntimeError, EOFError, OSError):
        return False


def test_the_sigterm_flag_of_rank_zero_crosses_on_the_host(tmp_path):
    """trainer=ddp's strategy broadcasts Lightning's SIGTERM flag over a host process group: a rank that learns of a
    SIGTERM stops with Lightning's SIGTERMException, the others carry on; nothing is read from a device."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from zfexp.ddp import broadcast_sigterm_on_host

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        broadcast_sigterm_on_host(SimpleNamespace(received_sigterm=False), None)
        with pytest.raises(SIGTERMException):
            broadcast_sigterm_on_host(SimpleNamespace(received_sigterm=True), None)
    finally:
        dist.destroy_process_group()
