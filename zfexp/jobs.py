"""What the entry points that read a checkpoint and write results (``zfexp.analyze``, ``zfexp.features``)
share: the device, the run dir with its resolved config, the loggers, the closing summary."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from zfexp.errors import InvalidValueError
from zfexp.loggers import finish_wandb
from zfexp.task import instantiate_dict, output_dir

DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str) -> None:
    if name not in DEVICES:
        raise InvalidValueError(f"device={name!r}; valid: {', '.join(DEVICES)}")


def device_of(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def start_run_dir(cfg: DictConfig) -> Path:
    """The job's output dir, created, with the resolved config saved in it."""
    run_dir = output_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    return run_dir


@contextlib.contextmanager
def job_loggers(cfg: DictConfig) -> Iterator[list[Logger]]:
    """The ``logger`` group's loggers with the resolved config logged; finalised when the block succeeds. W&B is
    finished in any case (see :func:`closing_wandb`)."""
    loggers = instantiate_dict(cfg.get("logger"), "logger")
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    yield loggers
    for lg in loggers:
        lg.finalize("success")


@contextlib.contextmanager
def closing_wandb() -> Iterator[None]:
    """Finish the W&B run when the job ends, even on an error, so that a failed job does not leave it open."""
    try:
        yield
    finally:
        finish_wandb()


def write_summary(run_dir: Path, name: str, summary: dict[str, Any]) -> Path:
    """``<run dir>/<name>``: the job's JSON summary (what it read, what it wrote, its numbers)."""
    path = run_dir / name
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path
