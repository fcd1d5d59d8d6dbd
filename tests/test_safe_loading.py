"""Opening a file never runs its code: a checkpoint, a state_dict or a cached mean image whose pickle carries a
payload (here: one that would create a marker file, as ``os.system`` would run anything) is refused by every
entry point that reads one, with one paragraph naming the file and a non-zero exit; ``trust_checkpoint=true``
is the user's explicit way to read a file they trust in full."""

import fractions
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import DATA_DIR, TINY_RUN, run_in_process
from zfexp.checkpoint_files import check_checkpoint_file
from zfexp.errors import CheckpointError, UnsafeFileError
from zfexp.safe_load import load_torch_file


class Payload:
    """What a malicious file holds: unpickling it calls ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def with_extra(checkpoint: Path, out: Path, extra) -> Path:
    """``checkpoint`` saved again with one more entry, ``extra``."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["extra"] = extra
    torch.save(ckpt, out)
    return out


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "payload_ran"
    yield path
    assert not path.exists(), "a file's code ran while it was opened"


@pytest.fixture
def evil_checkpoint(tiny_checkpoint, tmp_path, marker) -> Path:
    return with_extra(tiny_checkpoint, tmp_path / "from_a_colleague.ckpt", Payload(marker))


def refused(code: int, stderr: str, path: Path) -> str:
    """The one paragraph the user reads, checked: non-zero exit, no traceback, the file named, why, the opt-in."""
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    paragraph = stderr[stderr.index("Error: "):].strip()
    assert len(paragraph.splitlines()) <= 3, paragraph
    assert str(path) in paragraph and "could run code" in paragraph, paragraph
    return paragraph


TINY = [*TINY_RUN, "callbacks=default", "callbacks.progress_bar=null"]


def test_train_py_refuses_a_checkpoint_to_resume_that_carries_code(evil_checkpoint, tmp_path):
    # The default loggers (W&B reads the run id from the checkpoint to continue its run).
    code, stderr = run_in_process("train", *TINY, f"paths.log_dir={tmp_path / 'logs'}", f"ckpt_path={evil_checkpoint}")
    assert "trust_checkpoint=true" in refused(code, stderr, evil_checkpoint)
    assert not list((tmp_path / "logs").glob("train/runs/*/checkpoints/*.ckpt"))  # stopped before training


def test_ckpt_path_last_refuses_a_planted_last_ckpt(evil_checkpoint, tmp_path):
    planted = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00" / "checkpoints" / "last.ckpt"
    planted.parent.mkdir(parents=True)
    shutil.copy(evil_checkpoint, planted)
    code, stderr = run_in_process("train", *TINY, "logger=csv", f"paths.log_dir={tmp_path / 'logs'}", "ckpt_path=last")
    refused(code, stderr, planted)


def test_a_transfer_run_refuses_a_pretrained_checkpoint_that_carries_code(evil_checkpoint, tmp_path):
    code, stderr = run_in_process("train", "experiment=transfer_fashion", "logger=csv", "callbacks.progress_bar=null",
                                  f"paths.log_dir={tmp_path / 'logs'}", f"pretrained_ckpt={evil_checkpoint}")
    assert "pretrained_ckpt=" in refused(code, stderr, evil_checkpoint)


@pytest.mark.parametrize("module, overrides", [
    ("zfexp.analyze", []),
    ("zfexp.features", ["data=fashion_mnist_few_shot", "folds=1"]),
])
def test_analyze_and_features_refuse_a_checkpoint_that_carries_code(evil_checkpoint, tmp_path, module, overrides):
    code, stderr = run_in_process(module, f"ckpt_path={evil_checkpoint}", *overrides, "logger=csv",
                                  f"paths.log_dir={tmp_path / 'logs'}")
    refused(code, stderr, evil_checkpoint)


def test_analyze_refuses_a_state_dict_that_carries_code(tmp_path, marker):
    from zfexp.models import zfnet_small

    weights = tmp_path / "zfnet_small.pth"
    torch.save({**zfnet_small().state_dict(), "extra": Payload(marker)}, weights)
    code, stderr = run_in_process("zfexp.analyze", "network=zfexp.models.zfnet_small", f"weights={weights}",
                                  f"images={tmp_path}", "logger=csv", f"paths.log_dir={tmp_path / 'logs'}")
    assert "weights=" in refused(code, stderr, weights)


def test_a_cached_mean_image_that_carries_code_is_refused_and_named_with_how_to_recompute(tmp_path, marker):
    from zfexp.data import FashionMNISTDataModule

    # The cache of this very configuration, in a data dir of its own.
    data_dir = tmp_path / "data"
    shutil.copytree(DATA_DIR / "FashionMNIST", data_dir / "FashionMNIST")
    dm = FashionMNISTDataModule(root=str(data_dir), subset_size=256, preprocess={"resize": 32, "crop": 32,
                                                                                  "input_size": 28})
    cache = dm._mean_cache_path(60000)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mean": torch.zeros(1, 32, 32), "extra": Payload(marker)}, cache)
    code, stderr = run_in_process("train", *TINY, "logger=csv", f"paths.log_dir={tmp_path / 'logs'}",
                                  f"data.root={data_dir}")
    paragraph = refused(code, stderr, cache)
    assert f"rm {cache}" in paragraph and "trust_checkpoint" not in paragraph


def test_trust_checkpoint_is_the_explicit_way_to_read_a_file_holding_other_objects(tiny_checkpoint, tmp_path):
    # A checkpoint holding a harmless object that a safe load still refuses (not a tensor or a plain value).
    # Beside the run's own checkpoint: analyze reads the data config from the run dir.
    odd = with_extra(tiny_checkpoint, tiny_checkpoint.with_name("odd.ckpt"), fractions.Fraction(1, 3))
    out = ["analyses=[deconv]", "deconv.num_images=4", "deconv.layers=[conv1]", "logger=csv",
           f"paths.log_dir={tmp_path / 'logs'}"]
    code, stderr = run_in_process("zfexp.analyze", f"ckpt_path={odd}", *out)
    assert "Fraction" in refused(code, stderr, odd)
    code, stderr = run_in_process("zfexp.analyze", f"ckpt_path={odd}", "trust_checkpoint=true", *out)
    assert code == 0, stderr[-3000:]
    logs = (tmp_path / "logs").glob("analyze/runs/*/analyze.log")  # what it says is in the run's log
    assert any("analyses written to" in log.read_text() for log in logs)
    code, stderr = run_in_process("zfexp.analyze", f"ckpt_path={odd}", "trust_checkpoint=yes", *out)
    assert code != 0 and "trust_checkpoint='yes'" in stderr


def test_the_files_the_project_writes_load_safely_and_damaged_ones_are_named(tiny_checkpoint, tmp_path):
    ckpt = load_torch_file(tiny_checkpoint, "ckpt_path")  # weights_only: every entry of our checkpoints
    assert {"state_dict", "hyper_parameters", "random_state", "callbacks", "optimizer_states"} <= set(ckpt)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)  # torch's format before 1.6
    assert torch.equal(load_torch_file(legacy, "weights")["w"], torch.ones(3))
    assert check_checkpoint_file(legacy) == legacy  # a complete file, not "truncated"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(legacy.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="weights=.*cut.pt: the file cannot be read") as err:
        load_torch_file(cut, "weights")
    assert not isinstance(err.value, UnsafeFileError)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.txt: not a complete file written by torch.save: the file is"):
        load_torch_file(notes, "weights")
