"""Bad input, as a new user types it: the entry points stop before training with one short paragraph that names
the key and the value (no traceback), exit non-zero, and write nothing to resume from."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, train_cmd
from tests.test_data import make_image_tree

QUICK = ["logger=csv", "data.num_workers=0", "trainer.max_epochs=1",
         "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


def error_paragraph(done: subprocess.CompletedProcess) -> str:
    """What the user reads: from 'Error: ' to the end of stderr; there must be no traceback anywhere."""
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert "Error: " in done.stderr, done.stderr[-4000:]
    paragraph = done.stderr[done.stderr.index("Error: "):].strip()
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
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_stops_train_py_before_training_with_one_paragraph(tmp_path, case):
    overrides, words = BAD_VALUES[case]
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    log_dir = tmp_path / "logs"
    done = subprocess.run(train_cmd(*QUICK, f"paths.log_dir={log_dir}", *overrides), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    paragraph = error_paragraph(done)
    for word in words:
        assert word in paragraph, (word, paragraph)
    assert not list(log_dir.glob("train/runs/*/checkpoints/*.ckpt"))  # stopped before training


def test_a_corrupt_image_read_in_a_loader_worker_is_named_without_the_workers_traceback(tmp_path):
    tree = make_image_tree(tmp_path / "imagenet", classes=("cat", "dog"), n_train=3, n_val=1, size=(40, 40))
    broken = tree / "train" / "dog" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    done = subprocess.run(train_cmd(*QUICK, f"paths.log_dir={tmp_path / 'logs'}", "data=imagenet",
                                    f"data.root={tree}", "data.num_workers=1", "data.batch_size=2",
                                    "data.preprocess={resize: 40, crop: 40, input_size: 32, ten_crop: false}"),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    paragraph = error_paragraph(done)
    assert f"cannot read image {broken}" in paragraph and "worker" not in paragraph, paragraph


def test_analyze_and_features_report_a_bad_checkpoint_in_one_paragraph(tmp_path):
    ckpt = not_a_checkpoint(tmp_path)
    for module in ("zfexp.analyze", "zfexp.features"):
        done = subprocess.run([sys.executable, "-m", module, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / module}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        paragraph = error_paragraph(done)
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
    from zfexp.runs.launchers import LAUNCHER_EXTRAS, MissingExtraError, check_launcher_extra

    missing = {"ray": ("hydra_plugins.no_such_launcher", "ray")}
    needs = r"hydra/launcher=ray needs the \[ray\] extra.*pip install -e '\.\[ray\]'"
    with pytest.raises(MissingExtraError, match=needs):
        check_launcher_extra(["-m", "sweep=seeds", "hydra/launcher=ray"], missing)
    check_launcher_extra(["hydra/launcher=basic"], missing)  # a preset Hydra ships needs nothing
    check_launcher_extra(["hydra/launcher=ray", "hydra/launcher=slurm"], LAUNCHER_EXTRAS)  # both installed here
