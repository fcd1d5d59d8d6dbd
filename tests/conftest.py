"""Shared fixtures: configs composed with Hydra's compose API, small slices of real Fashion-MNIST."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import runpy
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_SILENT", "true")
DATA_DIR = ROOT / "data"  # shared across tests: Fashion-MNIST is extracted and mean images cached once

# Small, fast runs: a slice of the real data, no worker processes, no progress bar.
TINY_RUN = ["data.subset_size=256", "data.num_workers=0", "data.batch_size=64", "trainer.max_epochs=1",
            "trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
            "model.widths={conv1: 8, conv2: 16, conv3: 16, conv4: 16, conv5: 16, fc6: 32, fc7: 32}"]
# ... with the paper's visualisation callbacks (callbacks=paper, as the quickstart has them) at the first epoch
# and on a few images
TINY = [*TINY_RUN,
        "callbacks.deconv_snapshots.epochs=[1]", "callbacks.deconv_snapshots.probe_size=64",
        "callbacks.top_activations.max_images=64", "callbacks.filter_diagnostics.probe_size=64",
        "callbacks.occlusion_maps.probe_size=2", "callbacks.occlusion_maps.stride=3",
        "callbacks.invariance_curves.probe_size=2"]


def compose_train(run_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The train config as train.py would see it; ``run_dir`` is ``<log_dir>/<task>/runs/<name>``."""
    return compose_config("train", run_dir, overrides)


def compose_config(name: str, run_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """``conf/<name>.yaml`` composed as its entry point would see it, writing to ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.data_dir={DATA_DIR}", f"paths.log_dir={run_dir.parents[2]}",
                                          *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="session")
def fashion_mnist_raw() -> Path:
    """The raw Fashion-MNIST files under DATA_DIR (extracted from the Debian package on first use)."""
    from zfexp.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(root=str(DATA_DIR))
    dm._ensure_files()
    return dm.raw_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "train" / "runs" / "run0"
    path.mkdir(parents=True)
    return path


def train_cmd(*overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), f"paths.data_dir={DATA_DIR}", *overrides]


def run_entry_point(module: str) -> None:
    """Run an entry point as its command line does: ``"train"`` is ``python train.py``, a module
    (``"zfexp.analyze"``) is ``python -m <module>``'s ``main()``, a package's (``"zfexp.atlas"``) its ``__main__``'s."""
    if module == "train":
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        return
    target = importlib.import_module(module)
    if hasattr(target, "__path__"):  # a package: python -m runs its __main__
        target = importlib.import_module(f"{module}.__main__")
    target.main()


def run_in_process(module: str, *overrides: str) -> tuple[int, str]:
    """An entry point run in this process as its command line runs it (Hydra's own ``main``, error reporting
    included): ``(exit code, what it wrote to stderr)``. Cheaper than a subprocess by the imports; the logging
    Hydra sets up for the job is taken down afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    GlobalHydra.instance().clear()
    stderr = io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", [module, f"paths.data_dir={DATA_DIR}", *overrides]), \
            contextlib.redirect_stderr(stderr):
        try:
            run_entry_point(module)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
                    handler.close()
            root.setLevel(level)
    return code, stderr.getvalue()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The ``last.ckpt`` of a short quickstart run (zfnet_small, a slice of the data), in its run dir with its
    ``config.yaml``: the kind of checkpoint a colleague passes on."""
    from zfexp.training import train

    run = tmp_path_factory.mktemp("tiny_fit") / "logs" / "train" / "runs" / "run0"
    run.mkdir(parents=True)
    train(compose_train(run, ["experiment=quickstart", *TINY_RUN, "logger=csv", "callbacks=default",
                              "callbacks.progress_bar=null", "test=false", "data.subset_size=128"]))
    return run / "checkpoints" / "last.ckpt"


RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache, and no way out: a download fails at once (connection refused)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for var in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return home


@pytest.fixture
def cached_resnet18(torch_home) -> dict[str, torch.Tensor]:
    """A resnet18 state_dict where torchvision keeps ResNet18_Weights.IMAGENET1K_V1 once downloaded."""
    torch.manual_seed(7)
    state = torchvision.models.resnet18().state_dict()
    path = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state
