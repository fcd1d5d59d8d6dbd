"""train.py end to end on small slices of real Fashion-MNIST: outputs, W&B offline run, resume, bad input."""

import json
import re
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf.errors import MissingMandatoryValue

from tests.conftest import ROOT, TINY, compose_train, train_cmd
from tests.helpers.image_trees import make_image_tree
from tests.helpers.wandb_records import config as wandb_config
from tests.helpers.wandb_records import history
from zfexp.errors import DatasetNotFoundError, InvalidValueError, NonFiniteLossError
from zfexp.models import zfnet
from zfexp.training import train


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_tiny_run_writes_metrics_checkpoints_config_and_a_wandb_run(run_dir):
    import wandb

    metrics = train(compose_train(run_dir, ["experiment=quickstart", *TINY]))
    assert wandb.run is None  # finished at job end
    on_disk = read_metrics(run_dir)
    assert on_disk["status"] == "completed" and on_disk["epochs"] == 1
    for key in ("train/top1_err", "train/top5_err", "val/top1_err", "val/top5_err", "test/top1_err", "test/top5_err"):
        assert 0.0 <= on_disk[key] <= 100.0, key
    assert on_disk["test/top5_err"] <= on_disk["test/top1_err"]
    assert on_disk["num_parameters"] == metrics["num_parameters"] > 0 and on_disk["wall_time_s"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert Path(on_disk["best_checkpoint"]).exists()
    assert Path(on_disk["best_checkpoint"]).name == "best_epoch001.ckpt"  # after the first epoch: counted from 1
    resolved = (run_dir / "config.yaml").read_text()
    assert "${" not in resolved and "subset_size: 256" in resolved

    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = history(wandb_file)
    logged = {k: v for row in rows for k, v in row.items()}
    for key in ("train/loss", "train/top1_err", "val/top1_err", "renorm/conv1", "test/top1_err"):
        assert key in logged, key
    assert logged["test/top1_err"] == pytest.approx(on_disk["test/top1_err"], abs=1e-3)
    cfg = wandb_config(wandb_file)
    assert cfg["model"]["_target_"] == "zfexp.models.zfnet_small" and cfg["num_parameters"] == on_disk["num_parameters"]


@pytest.mark.parametrize("enabled", [True, False])
def test_filter_renorm_runs_every_step_of_a_fit(run_dir, enabled):
    train(compose_train(run_dir, ["experiment=quickstart", *TINY, "logger=csv", "test=false",
                                  "callbacks.filter_renorm.radius=0.02", "module.lr=0.1",
                                  f"callbacks.filter_renorm.enabled={str(enabled).lower()}"]))
    from zfexp.analysis import filter_rms
    from zfexp.module import ImageClassifier

    net = ImageClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").net
    largest = {name: filter_rms(net.get_submodule(name).weight).max().item()
               for name in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    csv = (run_dir / "csv" / "metrics.csv").read_text()
    if enabled:
        assert all(rms <= 0.02 * (1 + 1e-5) for rms in largest.values()), largest
        assert "renorm/conv1" in csv
    else:  # Fig. 6 (a): kaiming's conv1 filters (std 0.28 on 5x5x1) stay far above the radius
        assert largest["conv1"] > 0.1 and "renorm/" not in csv


@pytest.mark.parametrize("overrides, error, words", [
    (["model.remove=[conv9]"], ValueError, ["model.remove", "'conv9'", "conv1"]),
    (["model.widths={fc6: 0}"], ValueError, ["model.widths.fc6=0", "positive integer"]),
    (["model.remove=[conv1,conv2,conv3,conv4,conv5]"], ValueError, ["every conv layer"]),
    (["model.norm=group"], ValueError, ["model.norm='group'", "lrn, batchnorm, none"]),
    (["data=imagenet", "data.root=/nonexistent/imagenet"], DatasetNotFoundError, ["/nonexistent/imagenet/train"]),
    (["data.root=/nonexistent/fmnist", "data.download=false", "data.debian_dir=null"], DatasetNotFoundError,
     ["/nonexistent/fmnist", "apt-get install dataset-fashion-mnist"]),
    (["callbacks.filter_renorm.layers=[conv9]"], ValueError, ["'conv9'", "conv1"]),
    (["ckpt_path=/no/such.ckpt"], FileNotFoundError, ["/no/such.ckpt", "ckpt_path=last"]),
    (["data=imagenet"], MissingMandatoryValue, ["data.root"]),  # mandatory, no default
])
def test_bad_input_stops_before_training_with_a_clear_message(run_dir, overrides, error, words):
    with pytest.raises(error) as err:
        train(compose_train(run_dir, ["experiment=quickstart", *TINY, "logger=csv", *overrides]))
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert not list(run_dir.glob("checkpoints/*.ckpt"))  # nothing trained
    assert read_metrics(run_dir)["status"] == "failed"


def test_unknown_preset_lists_the_valid_ones():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        with pytest.raises(MissingConfigException) as err:
            compose("train", overrides=["model=zfnet_huge"])
    assert "zfnet_huge" in str(err.value) and "zfnet_small" in str(err.value)


def test_trainer_presets_compose(run_dir):
    gpu = compose_train(run_dir, ["trainer=gpu"])
    assert gpu.trainer.precision == "bf16-mixed" and gpu.trainer.accelerator == "gpu"
    assert gpu.module.channels_last == "auto"  # the presets set trainer values only
    assert gpu.trainer.benchmark is True  # cuDNN's autotuning, as torchvision's reference scripts
    assert compose_train(run_dir, ["trainer=gpu", "trainer.deterministic=true"]).trainer.benchmark is False
    ddp = compose_train(run_dir, ["trainer=ddp"])
    assert ddp.trainer.strategy._target_ == "zfexp.ddp.DDPStrategy"  # Lightning's, without its per-step sync
    assert ddp.trainer.devices == -1 and ddp.trainer.max_epochs == 70
    assert ddp.trainer.precision == "bf16-mixed"  # from gpu.yaml, which it extends


def test_the_paper_recipe_is_the_default_that_paper_imagenet_leaves_in_place(run_dir):
    """Sec. 3's numbers, composed: experiment=paper_imagenet states only what differs from the defaults."""
    cfg = compose_train(run_dir, ["experiment=paper_imagenet", "data.root=/imagenet"])
    assert cfg.data._target_ == "zfexp.data.ImageFolderDataModule" and cfg.data.batch_size == 128
    assert dict(cfg.data.preprocess) == {"resize": 256, "crop": 256, "input_size": 224, "mean_image": True,
                                         "hflip": True, "ten_crop": True, "pixel_scale": 255.0}
    assert cfg.model._target_ == "zfexp.models.zfnet"
    assert (cfg.model.init, cfg.model.norm, cfg.model.dropout) == ("paper", "lrn", 0.5)
    assert (cfg.module.lr, cfg.module.momentum, cfg.trainer.max_epochs) == (0.01, 0.9, 70)
    assert cfg.callbacks.filter_renorm.radius == 0.1 and cfg.callbacks.filter_renorm.layers is None
    missing = compose_train(run_dir, ["experiment=paper_imagenet"])
    with pytest.raises(MissingMandatoryValue):
        _ = missing.data.root  # the base file's keys do not fill a mandatory value


def test_channels_last_auto_follows_the_device():
    from zfexp.module import ImageClassifier

    net = {"_target_": "zfexp.models.zfnet_small", "widths": {"conv1": 8, "conv2": 8, "conv3": 8, "conv4": 8,
                                                              "conv5": 8, "fc6": 8, "fc7": 8}}
    auto = ImageClassifier(net=net, num_classes=10, in_channels=1, input_size=28, channels_last="auto")
    auto.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    auto.setup("fit")
    assert not auto.channels_last and auto.net.conv1.weight.is_contiguous()
    forced = ImageClassifier(net=net, num_classes=10, in_channels=1, input_size=28, channels_last=True)
    assert forced.channels_last and forced.net.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(InvalidValueError, match="module.channels_last='yes'.*auto"):
        ImageClassifier(net=net, num_classes=10, in_channels=1, input_size=28, channels_last="yes")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    runs = tmp_path / "logs" / "train" / "runs"
    first, second = runs / "a", runs / "b"
    train(compose_train(first, ["experiment=quickstart", *TINY, "logger=csv", "test=false"]))
    good = (first / "checkpoints" / "last.ckpt").read_bytes()
    time.sleep(0.01)
    with pytest.raises(NonFiniteLossError, match="train/loss is nan"):
        train(compose_train(second, ["experiment=quickstart", *TINY, "logger=csv", "ckpt_path=last",
                                     "trainer.max_epochs=2", "data.preprocess.pixel_scale=inf"]))
    assert (first / "checkpoints" / "last.ckpt").read_bytes() == good
    assert "NonFiniteLossError" in read_metrics(second)["error"]
    for ckpt in second.glob("checkpoints/*.ckpt"):  # whatever was saved on the way out is finite
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


def _paper_imagenet_epoch(tree: Path, log_dir: Path, *overrides: str) -> Path:
    done = subprocess.run(train_cmd("experiment=paper_imagenet", "data=imagenet", f"data.root={tree}",
                                    f"paths.log_dir={log_dir}", "trainer.max_epochs=1", "data.batch_size=4",
                                    "data.num_workers=0", "logger=csv", "trainer.accelerator=cpu",
                                    "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
                                    *overrides),
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = log_dir.glob("train/runs/*")
    return run


@pytest.fixture(scope="module")
def paper_tree(tmp_path_factory) -> Path:
    return make_image_tree(tmp_path_factory.mktemp("imagenet"), classes=("n01", "n02"), n_train=4, n_val=2,
                           size=(300, 260))


@pytest.mark.slow  # the paper's recipe end to end at 224 px (40 s on 2 cores); its parts are tested one by one
def test_paper_imagenet_recipe_runs_one_epoch_on_a_tiny_tree(tmp_path, paper_tree):
    run = _paper_imagenet_epoch(paper_tree, tmp_path / "eager")
    metrics = read_metrics(run)
    assert metrics["status"] == "completed" and metrics["epochs"] == 1 and metrics["global_step"] == 2
    assert metrics["num_parameters"] == sum(p.numel() for p in zfnet(num_classes=2).parameters())
    (mean_file,) = paper_tree.glob("imagenet_mean_r256_c256_*.pt")
    assert torch.load(mean_file, weights_only=True).shape == (3, 256, 256)
    resolved = (run / "config.yaml").read_text()
    assert "ten_crop: true" in resolved and "input_size: 224" in resolved and "pixel_scale: 255.0" in resolved


@pytest.mark.slow  # compiling the network at 224 px takes 40-90 s on 2 cores
def test_a_compiled_run_gives_the_eager_runs_losses_and_the_plain_networks_checkpoint(tmp_path, paper_tree):
    metrics = read_metrics(_paper_imagenet_epoch(paper_tree, tmp_path / "eager"))
    compiled = _paper_imagenet_epoch(paper_tree, tmp_path / "compiled", "module.compile=true")
    compiled_metrics = read_metrics(compiled)
    for key in ("train/loss", "val/loss", "test/loss"):
        assert compiled_metrics[key] == pytest.approx(metrics[key], rel=1e-4), key
    assert "compile: true" in (compiled / "config.yaml").read_text()
    checkpoint = torch.load(compiled / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["compile"] is True
    assert not [k for k in checkpoint["state_dict"] if "_orig_mod" in k]
    plain = zfnet(num_classes=2)
    plain.load_state_dict({k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()
                           if k.startswith("net.")})  # strict: every key of the uncompiled network, nothing else


def test_debug_fdr_runs_one_batch_and_keeps_the_analysis_callbacks_quiet(run_dir):
    # As docs/callbacks.md has it: the quickstart's callbacks keep their epochs (2, 4, 8) beyond fast_dev_run's one.
    metrics = train(compose_train(run_dir, ["experiment=quickstart", *TINY, "debug=fdr", "logger=csv",
                                            "callbacks.deconv_snapshots.epochs=[1,2,4,8]"]))
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
    assert not (run_dir / "images").exists()  # sanity/fast_dev_run: no figures


def test_runs_started_in_the_same_second_get_run_dirs_of_their_own(tmp_path):
    def run_dir_of(*overrides: str) -> str:
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.log_dir={tmp_path}", *overrides], return_hydra_config=True)
        GlobalHydra.instance().clear()
        first = str(cfg.hydra.run.dir)
        assert str(cfg.hydra.run.dir) == first  # one run's dir is fixed once drawn
        return first, str(cfg.hydra.sweep.dir)

    (one, sweep_one), (two, sweep_two) = run_dir_of("ckpt_path=last"), run_dir_of("ckpt_path=last")
    assert one != two and sweep_one != sweep_two
    assert re.fullmatch(r".*/train/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}", one), one


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, native, expected):
    """A V100 or T4 supports bf16 only by emulation (torch counts it unless told not to): float32 there."""
    from zfexp.runs.resolvers import bf16_where_native

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert bf16_where_native("gpu") == expected


def test_seed_null_gives_every_process_of_a_torchrun_or_srun_launch_one_seed(monkeypatch):
    from zfexp.runs.seeding import run_seed

    def seed_of(**env: str) -> int:
        for key in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_STEP_ID", "LOCAL_RANK",
                    "RANK", "SLURM_PROCID", "PL_GLOBAL_SEED"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return run_seed(None)

    torchrun = [seed_of(WORLD_SIZE="4", TORCHELASTIC_RUN_ID="abc", RANK=str(r), LOCAL_RANK=str(r)) for r in range(4)]
    assert len(set(torchrun)) == 1 and 0 <= torchrun[0] < 2**32  # the ranks' shards of the data then fit together
    assert seed_of(WORLD_SIZE="4", TORCHELASTIC_RUN_ID="another launch") != torchrun[0]
    srun = {seed_of(SLURM_NTASKS="2", SLURM_JOB_ID="77", SLURM_STEP_ID="0", SLURM_PROCID=str(r)) for r in range(2)}
    assert len(srun) == 1 and seed_of(SLURM_NTASKS="2", SLURM_JOB_ID="77", SLURM_STEP_ID="1") not in srun
    # Two runs started by hand in one allocation (not srun steps) draw seeds of their own.
    assert seed_of(SLURM_NTASKS="2", SLURM_JOB_ID="77") != seed_of(SLURM_NTASKS="2", SLURM_JOB_ID="77")
    for unnamed in ({"WORLD_SIZE": "2", "RANK": "1"}, {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}):
        with pytest.raises(InvalidValueError, match="seed=null: this process is one of several"):
            seed_of(**unnamed)
    assert seed_of() != seed_of()  # one process: a seed drawn from the OS


def test_the_processes_of_one_torchrun_launch_share_their_run_dirs_name(monkeypatch):
    from zfexp.runs.resolvers import run_tag

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-1")
    assert run_tag() == run_tag() and re.fullmatch(r"[0-9a-f]{6}", run_tag())
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-2")
    tags = {run_tag()}
    monkeypatch.delenv("WORLD_SIZE")
    assert run_tag() not in tags and run_tag() != run_tag()  # single processes: drawn
