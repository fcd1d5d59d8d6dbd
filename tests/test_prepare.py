"""`python -m zfexp.data.prepare`: an ImageFolder tree resized once, resumable, corrupt images named and skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfexp.data.prepare import prepare
from zfexp.errors import InvalidValueError

from .conftest import ROOT, compose_config

SIZES = {"train/a/0.jpg": (60, 45), "train/a/1.JPEG": (30, 80), "train/b/2.png": (64, 64), "val/a/3.jpg": (50, 70)}


def _tree(root):
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    (root / "val" / "b").mkdir(parents=True)
    (root / "val" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "train" / "a" / "notes.txt").write_text("not an image: ignored")


def _prepare(tmp_path, run: str, *overrides):
    run_dir = tmp_path / "logs" / "prepare" / "runs" / run
    cfg = compose_config("prepare", run_dir, [f"data.root={tmp_path / 'in'}", f"out={tmp_path / 'out'}",
                                              "data.preprocess.resize=32", "workers=2", *overrides])
    return prepare(cfg), run_dir


def test_prepare_resizes_names_the_corrupt_file_and_resumes(tmp_path):
    _tree(tmp_path / "in")
    record, run_dir = _prepare(tmp_path, "first")
    assert record["status"] == "completed"
    assert (record["images"], record["written"], record["already_done"], record["corrupt"]) == (5, 4, 0, 1)
    assert "broken.jpg" in record["corrupt_files"][0]
    assert "broken.jpg" in (run_dir / "corrupt.txt").read_text()
    assert json.loads((run_dir / "prepare.json").read_text())["corrupt"] == 1
    for name, (w, h) in SIZES.items():
        with Image.open(tmp_path / "out" / name) as image:
            scale = 32 / min(w, h)  # the smaller side at 32, the aspect ratio kept (torchvision's rounding)
            assert image.size == (int(w * scale), int(h * scale)) and min(image.size) == 32
            assert image.format == ("PNG" if name.endswith(".png") else "JPEG")
    assert not (tmp_path / "out" / "train" / "a" / "notes.txt").exists()
    assert not list((tmp_path / "out").rglob("*.part"))

    # A second run skips the images already written; a killed run's temporary file is cleaned away.
    (tmp_path / "out" / "train" / "a" / ".0.jpg.x1.part").write_bytes(b"half")
    (tmp_path / "out" / "train" / "a" / "0.jpg").unlink()
    again, _ = _prepare(tmp_path, "second")
    assert (again["written"], again["already_done"], again["corrupt"]) == (1, 3, 1)
    assert not list((tmp_path / "out").rglob("*.part"))


def test_prepared_pixels_are_the_training_resize(tmp_path):
    from zfexp.data import ImageFolderDataModule

    _tree(tmp_path / "in")
    shutil.rmtree(tmp_path / "in" / "val" / "b")  # ImageFolder refuses a class folder without images
    _prepare(tmp_path, "png", "jpeg_quality=100")
    kwargs = dict(num_workers=0, val_size=0, preprocess={"resize": 32, "crop": 32, "input_size": 32,
                                                          "mean_image": False})
    original = ImageFolderDataModule(root=str(tmp_path / "in"), **kwargs)
    prepared = ImageFolderDataModule(root=str(tmp_path / "out"), **kwargs)
    for dm in (original, prepared):
        dm.prepare_data()
        dm.setup("fit")
    # The PNG is lossless: the prepared tree gives the very pixels the training's resize gives.
    png = [i for i, (path, _) in enumerate(original.data_train.dataset.samples) if path.endswith(".png")][0]
    assert (original.data_train.dataset[png][0] == prepared.data_train.dataset[png][0]).all()


def test_prepare_checks_its_options_before_reading(tmp_path):
    with pytest.raises(InvalidValueError, match="is inside data.root"):
        _prepare(tmp_path, "inside", f"out={tmp_path / 'in' / 'small'}")
    with pytest.raises(InvalidValueError, match=r"jpeg_quality=0: must be an integer in 1..100"):
        _prepare(tmp_path, "quality", "jpeg_quality=0")


def test_prepare_command_line(tmp_path):
    _tree(tmp_path / "in")
    done = subprocess.run([sys.executable, "-m", "zfexp.data.prepare", f"data.root={tmp_path / 'in'}",
                           f"out={tmp_path / 'out'}", "data.preprocess.resize=16", "workers=1",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "prepare.json").read_text())["written"] == 4
    assert "broken.jpg" in done.stderr + done.stdout


def processes_holding(text: str) -> list[int]:
    """The pids of the processes whose command line holds ``text`` (zombies, which run nothing, left out)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace") \
                    and " Z " not in (proc / "stat").read_text():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_prepare_killed_with_sigkill_leaves_no_worker_behind(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(400):  # the workers are still busy when the parent dies
        path = tmp_path / "in" / "train" / f"c{i % 3}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "zfexp.data.prepare", f"data.root={tmp_path / 'in'}", f"out={out}",
                             "data.val_dir=train", "data.preprocess.resize=16", "workers=2",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.rglob("*.png"))) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "prepare finished before it could be killed"
    proc.kill()
    proc.wait()
    time.sleep(1.0)
    assert processes_holding(f"out={out}") == []  # the pool's workers ended with their parent
    written = len(list(out.rglob("*.png")))
    time.sleep(0.5)
    assert len(list(out.rglob("*.png"))) == written < 400
