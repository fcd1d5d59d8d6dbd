"""Bad input, as a new user types it: the entry points stop before training with one short paragraph that names
the key and the value (no traceback), exit non-zero, and write nothing to resume from."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY, TINY_RUN, compose_train, run_in_process, train_cmd
from tests.helpers.image_trees import make_image_tree

QUICK = ["logger=csv", "data.num_workers=0", "trainer.max_epochs=1",
         "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


def error_paragraph(code: int, stderr: str) -> str:
    """What the user reads: from 'Error: ' to the end of stderr; there must be no traceback anywhere."""
    assert code != 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    assert "Error: " in stderr, stderr[-4000:]
    paragraph = stderr[stderr.index("Error: "):].strip()
    assert len(paragraph.splitlines()) <= 4, paragraph
    return paragraph


def not_a_checkpoint(folder: Path) -> Path:
    path = folder / "notes.ckpt"
    path.write_text("these are my notes, not a checkpoint\n")
    return path


def truncated_checkpoint(folder: Path) -> Path:
    whole, cut = folder / "whole.ckpt", folder / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}, "hyper_parameters": {}}, whole)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a copy cut short
    return cut


def empty_class_tree(folder: Path) -> Path:
    tree = make_image_tree(folder / "imagenet", classes=("cat", "dog"), n_train=2, n_val=1, size=(40, 40))
    for image in (tree / "train" / "dog").iterdir():
        image.unlink()
    return tree


# (overrides, words the message must hold); a callable override is given the test's tmp_path.
BAD_VALUES = {
    "crop larger than the resize": (["data.preprocess.crop=300"], ["data.preprocess.crop=300", "resize=32", "1..32"]),
    "crop larger than the images": (["experiment=quickstart", "data.preprocess.crop=30"],
                                    ["data.preprocess.crop=30", "28 x 28", "1..28"]),
    "input larger than the crop": (["data.preprocess.input_size=40"], ["data.preprocess.input_size=40", "crop=32"]),
    "no epochs": (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "at least 1"]),
    "no steps": (["trainer.max_steps=0"], ["trainer.max_steps=0", "positive"]),
    "a seed that is not a number": (["seed=abc"], ["seed='abc'", "integer"]),
    "a negative seed": (["seed=-3"], ["seed=-3", "0..4294967295"]),
    "a zero batch": (["data.batch_size=0"], ["data.batch_size=0", "positive"]),
    "a negative learning rate": (["module.lr=-1"], ["module.lr=-1", "positive"]),
    "checkpoint interval": (["callbacks.resume_checkpoint.every_n_train_steps=0"],
                            ["every_n_train_steps=0", "positive"]),
    "an unknown norm": (["model.norm=group"], ["model.norm='group'", "lrn, batchnorm, none"]),
    "a missing "
    "checkpoint": (["ckpt_path=/no/such.ckpt"], ["ckpt_path=/no/such.ckpt", "no such file", "ckpt_path=last"]),
    "nothing to resume": (["ckpt_path=last"], ["ckpt_path=last", "no earlier run"]),
    "a truncated checkpoint": (lambda tmp: [f"ckpt_path={truncated_checkpoint(tmp)}"], ["cut.ckpt", "truncated"]),
    "a pretrained file that is not a checkpoint": (
        lambda tmp: ["experiment=transfer_fashion", f"pretrained_ckpt={not_a_checkpoint(tmp)}"],
        ["pretrained_ckpt=", "notes.ckpt", "not a complete checkpoint"]),
    "a class folder without images": (lambda tmp: ["data=imagenet", f"data.root={empty_class_tree(tmp)}"],
                                      ["data.root", "dog", "without images"]),
    "a mandatory value left unset": (["data=imagenet"], ["data.root is required", "data.root=..."]),
    "a precision Lightning does not know": (["trainer.precision=banana"],
                                            ["trainer.precision='banana'", "bf16-mixed", "32-true"]),
    "a renorm radius of zero": (["callbacks.filter_renorm.radius=0"], ["callbacks.filter_renorm.radius=0", "positive"]),
    "true as a renorm radius": (["callbacks.filter_renorm.radius=true"], ["callbacks.filter_renorm.radius=True"]),
    "true as a checkpoint interval": (["callbacks.resume_checkpoint.every_n_train_steps=true"],
                                      ["callbacks.resume_checkpoint.every_n_train_steps=True", "positive integer"]),
    "an occlusion stride of zero": (["callbacks=paper", "callbacks.occlusion_maps.stride=0"],
                                    ["callbacks.occlusion_maps.stride=0", "positive integer"]),
    "an unknown occlusion layer": (["callbacks=paper", "callbacks.occlusion_maps.feature_layer=conv9"],
                                   ["callbacks.occlusion_maps.feature_layer", "conv9", "conv5"]),
    "a decoder this dataset has not": (["data.decoder=foo"], ["data.decoder='foo'", "fashion_mnist: cpu"]),
    "dali for Fashion-MNIST": (["data.decoder=dali"], ["data.decoder='dali'", "data=imagenet"]),
    "true as a batch size": (["data.batch_size=true"], ["data.batch_size=True", "positive integer"]),
    "a fractional subset": (["data.subset_size=2.5"], ["data.subset_size=2.5", "positive integer", "null"]),
    "layers fixed without a checkpoint": (["freeze=fc7"], ["freeze=fc7", "pretrained_ckpt"]),
    "from scratch with layers fixed, without a checkpoint": (["from_scratch=true", "freeze=fc7"],
                                                             ["freeze=fc7", "pretrained_ckpt"]),
    "from scratch without a checkpoint": (["from_scratch=true"], ["from_scratch=true", "pretrained_ckpt="]),
    "a metric no run records": (["optimized_metric=val/top1"], ["optimized_metric='val/top1'", "val/top1_err"]),
    **({} if torch.cuda.is_available() else {
        "a GPU trainer without a GPU": (["trainer=gpu"], ["trainer.accelerator=gpu", "no GPU", "trainer=default"])}),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_stops_train_py_before_training_with_one_paragraph(tmp_path, case):
    overrides, words = BAD_VALUES[case]
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    log_dir = tmp_path / "logs"
    paragraph = error_paragraph(*run_in_process("train", *QUICK, f"paths.log_dir={log_dir}", *overrides))
    for word in words:
        assert word in paragraph, (word, paragraph)
    assert not list(log_dir.glob("train/runs/*/checkpoints/*.ckpt"))  # stopped before training


def test_a_corrupt_image_read_in_a_loader_worker_is_named_without_the_workers_traceback(tmp_path):
    tree = make_image_tree(tmp_path / "imagenet", classes=("cat", "dog"), n_train=3, n_val=1, size=(40, 40))
    broken = tree / "train" / "dog" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    preprocess = "data.preprocess={resize: 40, crop: 40, input_size: 32, ten_crop: false}"
    paragraph = error_paragraph(*run_in_process("train", *QUICK, f"paths.log_dir={tmp_path / 'logs'}", "data=imagenet",
                                                f"data.root={tree}", "data.num_workers=1", "data.batch_size=2",
                                                preprocess))
    assert f"cannot read image {broken}" in paragraph and "worker" not in paragraph, paragraph


def test_analyze_and_features_report_a_bad_checkpoint_in_one_paragraph(tmp_path):
    ckpt = not_a_checkpoint(tmp_path)
    for module in ("zfexp.analyze", "zfexp.features"):
        paragraph = error_paragraph(*run_in_process(module, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / module}"))
        assert f"ckpt_path={ckpt}" in paragraph and "not a complete checkpoint" in paragraph, paragraph
        # The run lifecycle's record: the resolved config and <task>.json marked failed with the error.
        record = json.loads((tmp_path / module / f"{module.split('.')[1]}.json").read_text())
        assert record["status"] == "failed" and "not a complete checkpoint" in record["error"]
        assert (tmp_path / module / "config.yaml").is_file()


def test_hydra_full_error_brings_the_traceback_back(tmp_path):
    done = subprocess.run(train_cmd(*QUICK, f"paths.log_dir={tmp_path}", "trainer.max_epochs=0"), cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "trainer.max_epochs=0" in done.stderr


def test_a_launcher_preset_without_its_extra_names_the_extra():
    from zfexp.errors import MissingExtraError
    from zfexp.runs.launchers import LAUNCHER_EXTRAS, check_launcher_extra

    missing = {"ray": ("hydra_plugins.no_such_launcher", "ray")}
    needs = r"hydra/launcher=ray needs the \[ray\] extra.*pip install -e '\.\[ray\]'"
    with pytest.raises(MissingExtraError, match=needs):
        check_launcher_extra(["-m", "sweep=seeds", "hydra/launcher=ray"], missing)
    check_launcher_extra(["hydra/launcher=basic"], missing)  # a preset Hydra ships needs nothing
    check_launcher_extra(["hydra/launcher=ray", "hydra/launcher=slurm"], LAUNCHER_EXTRAS)  # both installed here


def test_a_launcher_whose_cluster_does_not_answer_stops_with_what_to_do():
    from ray._private.services import get_ray_address_from_environment

    from zfexp.errors import InvalidValueError
    from zfexp.runs.launchers import check_launcher_reachable

    try:
        get_ray_address_from_environment("auto", None)
        ray_running = True
    except ConnectionError:
        ray_running = False
    if not ray_running:  # as on a fresh machine: the sweep cannot join a Ray instance
        with pytest.raises(InvalidValueError, match=r"address=auto: no Ray instance runs on this machine.*ray start"):
            check_launcher_reachable(["-m", "hydra/launcher=ray", "hydra.launcher.ray.init.address=auto"])
    check_launcher_reachable(["-m", "hydra/launcher=ray"])  # Ray started here for the sweep: nothing to join
    sinfo = shutil.which("sinfo")
    answers = sinfo is not None and subprocess.run([sinfo, "-h"], capture_output=True).returncode == 0
    if answers:  # a SLURM controller answers here (tests/test_launchers.py starts one)
        check_launcher_reachable(["-m", "hydra/launcher=slurm"])
    else:
        with pytest.raises(InvalidValueError, match=r"hydra/launcher=slurm: (no SLURM controller answers|the SLURM "
                                                    r"client .* is not installed)"):
            check_launcher_reachable(["-m", "hydra/launcher=slurm"])


def test_resuming_a_checkpoint_of_another_network_says_which_before_training(tiny_checkpoint, tmp_path):
    log_dir = tmp_path / "logs"
    paragraph = error_paragraph(*run_in_process("train", *QUICK, "experiment=quickstart", "model=alexnet_small",
                                                f"ckpt_path={tiny_checkpoint}", f"paths.log_dir={log_dir}"))
    assert "its network is not the one this run builds" in paragraph, paragraph
    assert "net.conv1.weight is [8, 1, 5, 5] there" in paragraph, paragraph  # the shapes, then the configs
    assert "model._target_: 'zfexp.models.zfnet_small' there, 'zfexp.models.alexnet_small' here" in paragraph
    assert str(tiny_checkpoint.parents[1] / "config.yaml") in paragraph
    assert not list(log_dir.glob("train/runs/*/checkpoints/*.ckpt"))


def test_logger_none_runs_the_default_callbacks_without_a_logger(tmp_path):
    code, stderr = run_in_process("train", *TINY_RUN, "logger=none", "callbacks=default", "callbacks.progress_bar=null",
                                  "test=false", f"paths.log_dir={tmp_path / 'logs'}")
    assert code == 0, stderr[-3000:]
    (metrics,) = (tmp_path / "logs").glob("train/runs/*/metrics.json")
    assert json.loads(metrics.read_text())["status"] == "completed"


def test_analyze_names_the_full_key_of_a_layer_the_network_lacks(tiny_checkpoint, tmp_path):
    paragraph = error_paragraph(*run_in_process("zfexp.analyze", f"ckpt_path={tiny_checkpoint}", "logger=csv",
                                                "occlusion.feature_layer=conv9", f"paths.log_dir={tmp_path}"))
    assert "occlusion.feature_layer: layer='conv9'" in paragraph and "conv5" in paragraph, paragraph


def test_resuming_with_other_data_settings_names_the_probe_images_before_training(tmp_path):
    from zfexp.training import train

    first = tmp_path / "first"
    train(compose_train(first, ["experiment=quickstart", *TINY, "logger=csv", "test=false"]))
    paragraph = error_paragraph(*run_in_process(
        "train", "experiment=quickstart", *TINY, "logger=csv", "trainer.max_epochs=2", "data.subset_size=32",
        f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", f"paths.log_dir={tmp_path / 'logs'}"))
    assert "the checkpoint's probe images" in paragraph and "validation set of 32 images" in paragraph, paragraph
    assert "data.subset_size" in paragraph and "ckpt_path=null" in paragraph
