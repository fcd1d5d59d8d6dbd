"""Where an analysis callback's results go: each image, figure, table and scalar saved under the run dir and
logged to every logger at the trainer's global step, keyed by the epoch it was drawn after (``epoch_keys``);
``TrainingSink`` hands them over as the sink of the figures' recipes (:mod:`zfexp.recipes`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from zfexp.recipes import Inputs
from zfexp.runs.outputs import figure_to_image, file_key, write_image, write_table

# ``epoch=ONCE``: a figure drawn once per run (the deconv evolution grid), logged under its key as it is.
ONCE: Any = object()


def tag(epoch: int | None) -> str:
    """``epoch003`` for a scheduled run, ``final`` for the end of fit: the suffix of image keys."""
    return "final" if epoch is None else f"epoch{epoch:03d}"


def epoch_keys(key: str, epoch: int | None) -> tuple[str, str, str]:
    """``(W&B key, file name, caption suffix)`` of a figure drawn after ``epoch`` (``None``: at the end of fit).

    W&B gets one key per figure, logged at each epoch's step, so its media panel has a slider over the epochs;
    the end-of-fit figure has its own key, ``<key>/final``. The run dir's file names keep the epoch:
    ``deconv/conv5`` after epoch 3 is ``images/deconv_conv5_epoch003.png``, at the end ``..._final.png``."""
    if epoch is ONCE:
        return key, file_key(key), ""
    return (key if epoch is not None else f"{key}/final", f"{file_key(key)}_{tag(epoch)}",
            f" (epoch {epoch})" if epoch is not None else " (end of fit)")


def run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.default_root_dir)


@rank_zero_only
def log_image(trainer: L.Trainer, key: str, image: torch.Tensor, caption: str | None = None,
              epoch: int | None = ONCE) -> Path:
    """Save ``image [C, H, W]`` in [0, 1] under the run dir's ``images/`` and log it to every logger that takes
    images at the trainer's global step; ``epoch``: the epoch it was drawn after, ``None`` at the end of fit
    (keys, file names and caption: :func:`epoch_keys`)."""
    key, name, when = epoch_keys(key, epoch)
    return write_image(run_dir(trainer), trainer.loggers, key, image, trainer.global_step,
                       (caption or key) + when, file_name=name)


@rank_zero_only
def log_figure(trainer: L.Trainer, key: str, fig, caption: str | None = None, epoch: int | None = ONCE,
               ) -> Path | None:
    """A matplotlib figure, as ``log_image`` does with an image (the figure is closed). Like every function
    here marked ``rank_zero_only``, ``None`` on the other ranks."""
    return log_image(trainer, key, figure_to_image(fig), caption, epoch)


@rank_zero_only
def log_table(trainer: L.Trainer, key: str, rows: list[dict], epoch: int | None = ONCE,
              images: dict[str, list[torch.Tensor]] | None = None) -> Path:
    """Rows of numbers as a CSV file under the run dir's ``tables/`` and a table in every logger that takes
    tables (W&B), keyed as ``log_image`` keys images. ``images``: columns of images ``[C, H, W]`` in [0, 1],
    one per row, added to the W&B table as image cells (the CSV holds the numbers only)."""
    key, name, _ = epoch_keys(key, epoch)
    return write_table(run_dir(trainer), trainer.loggers, key, rows, trainer.global_step, file_name=name,
                       images=images)


def log_scalars(trainer: L.Trainer, stats: dict[str, float]) -> None:
    """Scalars to every logger at the trainer's global step. They are also kept in ``trainer.callback_metrics``,
    so the run's ``metrics.json`` (and a sweep's summary) holds their last values."""
    for logger in trainer.loggers:
        logger.log_metrics(stats, step=trainer.global_step)
    trainer.callback_metrics.update({k: torch.tensor(float(v)) for k, v in stats.items()})


def inputs_of(trainer: L.Trainer) -> Inputs:
    """The trainer's datamodule's inputs as the recipes see them (shown, grey, class names)."""
    return Inputs.of_datamodule(trainer.datamodule)  # type: ignore[attr-defined]  # set by its data connector


class TrainingSink:
    """The recipes' sink in training: each image, figure and table saved under the run dir and logged to every
    logger at the trainer's step, keyed for ``epoch`` (:func:`epoch_keys`; ``None``: the end of fit);
    ``rename`` gives a recipe's key (``occlusion/panel``) the callback's own (:meth:`ScheduledAnalysis.key`)."""

    def __init__(self, trainer: L.Trainer, epoch: int | None, rename: Callable[[str], str] = str):
        self.trainer, self.epoch, self.rename = trainer, epoch, rename

    def image(self, key: str, image: torch.Tensor, caption: str) -> None:
        log_image(self.trainer, self.rename(key), image, caption, self.epoch)

    def figure(self, key: str, fig, caption: str) -> None:
        log_figure(self.trainer, self.rename(key), fig, caption, self.epoch)

    def table(self, key: str, rows: list[dict], images: dict[str, list[torch.Tensor]] | None = None) -> None:
        log_table(self.trainer, self.rename(key), rows, self.epoch, images)

    def scalars(self, stats: dict[str, float]) -> None:
        log_scalars(self.trainer, stats)
