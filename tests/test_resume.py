"""Reproducibility: a run killed with SIGKILL and resumed with ckpt_path=last ends with the uninterrupted run's
numbers, bit for bit on the CPU; the same seeded command gives the same numbers whether the mean image was cached
or computed; a diverged run recovers by following its own message."""

import json
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.conftest import ROOT, train_cmd
from tests.helpers.wandb_records import history
from zfexp.data.sampling import ResumableLoader, SeededItems, SeededSampler

# Long enough epochs to kill one in the middle (3000 // 32 = 94 steps), dropout on so that the global
# generator matters, the paper's random crops and flips (resize 32 -> 28 px crops) so that augmentation does.
RESUMABLE_RUN = ["experiment=quickstart", "callbacks=default", "logger=csv", "data.subset_size=3000",
                 "data.batch_size=32", "data.preprocess.resize=32", "data.preprocess.crop=32", "model.dropout=0.5",
                 "trainer.max_epochs=2", "trainer.deterministic=true", "callbacks.progress_bar=null",
                 "trainer.enable_progress_bar=false",
                 "model.widths={conv1: 8, conv2: 16, conv3: 16, conv4: 16, conv5: 16, fc6: 32, fc7: 32}"]
STEPS_PER_EPOCH = -(-3000 // 32)
COMPARED = ("train/top1_err", "train/loss", "val/top1_err", "val/loss", "test/top1_err", "test/top5_err",
            "test/loss", "global_step", "epochs")


def run_metrics(log_dir: Path, *overrides: str) -> dict:
    done = subprocess.run(train_cmd(*RESUMABLE_RUN, f"paths.log_dir={log_dir}", *overrides), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    newest = max(log_dir.glob("train/runs/*/metrics.json"), key=lambda p: p.stat().st_mtime)
    return {**json.loads(newest.read_text()), "run_dir": newest.parent}


def final_weights(metrics: dict) -> dict[str, torch.Tensor]:
    last = metrics["run_dir"] / "checkpoints" / "last.ckpt"
    return torch.load(last, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    return run_metrics(tmp_path_factory.mktemp("uninterrupted") / "logs")


def kill_when(log_dir: Path, overrides: list[str], ready) -> Path:
    """Start train.py, SIGKILL it as soon as ``ready(checkpoint_dir)`` holds; the run's checkpoint dir."""
    proc = subprocess.Popen(train_cmd(*RESUMABLE_RUN, f"paths.log_dir={log_dir}", *overrides), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            found = list(log_dir.glob("train/runs/*/checkpoints"))
            if found and ready(found[0]):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return found[0]
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
    raise AssertionError(f"the run ended before it could be killed: {proc.stderr.read().decode()[-3000:]}")


def step_of(path: Path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


# The mid-epoch resume is the harder one (the loader's position, the epoch's metrics so far); the epoch
# boundary's runs with the slow tests.
@pytest.mark.parametrize("where", ["mid_epoch", pytest.param("epoch_boundary", marks=pytest.mark.slow)])
def test_killed_run_resumes_to_the_uninterrupted_runs_numbers(tmp_path, uninterrupted, where):
    log_dir = tmp_path / "logs"
    if where == "mid_epoch":  # in the second epoch, with two loader workers; resumed on a machine without them
        overrides = ["callbacks.resume_checkpoint.every_n_train_steps=10"]
        killed, resuming = ["data.num_workers=2"], ["data.num_workers=0"]
        ckpts = kill_when(log_dir, [*overrides, *killed],
                          lambda d: (step_of(d / "last_step.ckpt") or 0) > STEPS_PER_EPOCH)
    else:  # only epoch-boundary checkpoints: killed early in the second epoch
        overrides = ["callbacks.resume_checkpoint.every_n_train_steps=null", "data.num_workers=0"]
        killed = resuming = []
        ckpts = kill_when(log_dir, overrides, lambda d: step_of(d / "last.ckpt") == STEPS_PER_EPOCH)
    assert not (ckpts.parent / "metrics.json").exists()  # killed: it never finished

    resumed = run_metrics(log_dir, *overrides, *resuming, "ckpt_path=last")
    resumed_from = Path(resumed["resumed_from"])
    killed_at = step_of(resumed_from)
    if where == "mid_epoch":
        assert resumed_from.name == "last_step.ckpt" and STEPS_PER_EPOCH < killed_at < 2 * STEPS_PER_EPOCH, killed_at
    else:
        assert resumed_from.name == "last.ckpt" and killed_at == STEPS_PER_EPOCH
    for key in COMPARED:
        assert resumed[key] == uninterrupted[key], (key, resumed[key], uninterrupted[key])
    before, after = final_weights(uninterrupted), final_weights(resumed)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("workers_before, workers_after", [(2, 0), (0, 2), (2, 1)])
def test_a_loader_resumes_its_epoch_with_another_number_of_workers(workers_before, workers_after):
    """The rest of the epoch, batch for batch, whatever the processes before and after; and again after a
    second interruption in the resumed epoch (the position counts from the epoch's start)."""
    data = SeededItems(TensorDataset(torch.arange(50)))

    def loader(workers: int) -> ResumableLoader:
        sampler = SeededSampler(50, seed=7)
        sampler.set_epoch(3)
        return ResumableLoader(data, sampler=sampler, batch_size=4, num_workers=workers)

    whole = [batch[0].tolist() for batch in loader(0)]
    first = loader(workers_before)
    batches = iter(first)
    done = [next(batches)[0].tolist() for _ in range(5)]
    state = first.state_dict()
    assert state == {"batches": 5, "finished": False, "processes": 1}
    second = loader(workers_after)
    second.load_state_dict(state)
    batches = iter(second)
    done += [next(batches)[0].tolist() for _ in range(3)]
    third = loader(workers_before)
    third.load_state_dict(second.state_dict())
    assert done + [batch[0].tolist() for batch in third] == whole


def test_a_mid_epoch_position_of_another_number_of_processes_is_refused():
    from zfexp.errors import CheckpointError

    data = SeededItems(TensorDataset(torch.arange(50)))
    two = ResumableLoader(data, sampler=SeededSampler(50, seed=7, num_replicas=2, rank=0), batch_size=4)
    next(iter(two))
    one = ResumableLoader(data, sampler=SeededSampler(50, seed=7), batch_size=4)
    with pytest.raises(CheckpointError, match="middle of an epoch by 2 training processes, and this run has 1"):
        one.load_state_dict(two.state_dict())
    one.load_state_dict({**two.state_dict(), "finished": True})  # an epoch's end: any number of processes


def test_a_loader_reads_the_state_torchdata_wrote_in_older_checkpoints():
    data = SeededItems(TensorDataset(torch.arange(50)))
    sampler = SeededSampler(50, seed=7)
    whole = [batch[0].tolist() for batch in ResumableLoader(data, sampler=sampler, batch_size=4)]
    for state in ({"_num_yielded": 5, "_iterator_finished": False},  # torchdata's, without worker processes
                  {"_snapshot": {"_snapshot_step": 4}, "_steps_since_snapshot": 1, "_iterator_finished": False}):
        resumed = ResumableLoader(data, sampler=SeededSampler(50, seed=7), batch_size=4)
        resumed.load_state_dict(state)
        assert [batch[0].tolist() for batch in resumed] == whole[5:]
    ended = ResumableLoader(data, sampler=SeededSampler(50, seed=7), batch_size=4)
    ended.load_state_dict({"batches": 13, "finished": True})  # an epoch's end: the next epoch, from its start
    assert len(list(ended)) == 13


@pytest.mark.slow
def test_the_same_command_gives_the_same_numbers_with_and_without_the_mean_image_cache(tmp_path, fashion_mnist_raw):
    root = tmp_path / "data"  # a data folder of its own, with no cached mean image yet
    shutil.copytree(fashion_mnist_raw.parent, root / "FashionMNIST")
    common = [f"data.root={root}", "data.num_workers=0", "trainer.max_epochs=1", "data.subset_size=640"]
    computed = run_metrics(tmp_path / "a", *common)
    (cache,) = root.glob("fashion_mnist_mean_*.pt")
    cached = run_metrics(tmp_path / "b", *common)
    assert cache.stat().st_mtime_ns == next(root.glob("fashion_mnist_mean_*.pt")).stat().st_mtime_ns  # read, not redone
    for key in COMPARED:
        assert computed[key] == cached[key], (key, computed[key], cached[key])


def test_a_diverged_run_recovers_by_following_its_message(tmp_path):
    log_dir = tmp_path / "logs"
    base = [*RESUMABLE_RUN, f"paths.log_dir={log_dir}", "data.num_workers=0", "data.subset_size=640",
            "trainer.max_epochs=1"]
    diverged = subprocess.run(train_cmd(*base, "module.lr=1e4"), cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
    assert diverged.returncode != 0 and "Traceback" not in diverged.stderr, diverged.stderr[-3000:]
    message = diverged.stderr[diverged.stderr.index("Error: "):].strip()
    assert "train/loss is nan" in message and len(message.splitlines()) <= 4, message
    # The message names the checkpoint from before the divergence and the command that resumes from it.
    (run,) = log_dir.glob("train/runs/*")
    assert str(run / "checkpoints" / "last.ckpt") in message
    advice = re.search(r"python train\.py (ckpt_path=last module\.lr=\S+)", message).group(1).split()
    kept = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert kept["global_step"] == 0 and kept["optimizer_states"][0]["param_groups"][0]["lr"] == 1e4
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())

    recovered = subprocess.run(train_cmd(*base, "module.lr=1e4", *advice), cwd=ROOT, capture_output=True,
                               text=True, timeout=300)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    assert "replaces the checkpoint's 10000" in recovered.stderr + recovered.stdout, shlex.join(advice)
    metrics = json.loads(max(log_dir.glob("train/runs/*/metrics.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert metrics["status"] == "completed" and metrics["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("train/loss", "val/loss", "test/loss"))
    resumed = torch.load(Path(metrics["best_checkpoint"]).parent / "last.ckpt", weights_only=True)
    assert Path(metrics["best_checkpoint"]).parent.parent != run  # the resumed run's own
    assert resumed["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01)


def test_a_resumed_run_logs_to_the_wandb_run_it_resumes(tmp_path):
    from tests.conftest import TINY_RUN, compose_train
    from zfexp.training import train

    runs = tmp_path / "logs" / "train" / "runs"
    first, second = runs / "a", runs / "b"
    train(compose_train(first, ["experiment=quickstart", "callbacks=default", *TINY_RUN, "test=false"]))
    (first_wandb,) = first.glob("wandb/offline-run-*")
    run_id = first_wandb.name.rsplit("-", 1)[1]
    ckpt = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["wandb_run_id"] == run_id

    metrics = train(compose_train(second, ["experiment=quickstart", "callbacks=default", *TINY_RUN, "test=false",
                                           "trainer.max_epochs=2", "ckpt_path=last"]))
    assert metrics["resumed_from"] == str(first / "checkpoints" / "last.ckpt") and metrics["epochs"] == 2
    (second_wandb,) = second.glob("wandb/offline-run-*")
    assert second_wandb.name.rsplit("-", 1)[1] == run_id  # the same W&B run, continued (wandb sync joins them)
    (records,) = second_wandb.glob("run-*.wandb")
    steps = [row["trainer/global_step"] for row in history(records) if "val/loss" in row]
    assert steps == [7]  # only the resumed epoch: 256 images / 64 = 4 steps an epoch, logged at the epoch's last
