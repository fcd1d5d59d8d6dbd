"""Checkpoints to resume from (``ResumeCheckpoint``) and the best epoch's (``BestCheckpoint``).

A checkpoint is only worth resuming from when it holds a state the uninterrupted run passed through, and
that Lightning's loops resume from as such: all batches before it trained, none after, the data loader's
position, the LR scheduler stepped. Three points of a fit are such states: before the first step, the end of
an epoch (after its validation: the module steps its plateau scheduler when validation ends), and the end of a
training batch. ``ResumeCheckpoint`` writes only there, the epoch's and the batch's under names of their own,
so a mid-epoch checkpoint never replaces the epoch's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from zfexp.checkpoint_files import LAST, LAST_STEP
from zfexp.checks import positive_int
from zfexp.divergence import is_finite_model
from zfexp.runs.config_groups import config_key

log = logging.getLogger(__name__)


class ResumeCheckpoint(Checkpoint):
    """``<dirpath>/last.ckpt`` at the end of every epoch and before the first step (so a run that diverges at
    once can still be resumed with other settings), and ``<dirpath>/last_step.ckpt`` every ``every_n_train_steps``
    steps within an epoch. Never from weights that are NaN or infinite, and never on an exception, whose state may
    be half a step. ``python train.py ckpt_path=last`` resumes the newest of them.

    Args:
        dirpath: the run's checkpoint folder.
        every_n_train_steps: mid-epoch checkpoint interval in optimizer steps; ``null``: epoch boundaries only.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = 200):
        positive_int(f"{config_key('ResumeCheckpoint')}.every_n_train_steps", every_n_train_steps,
                     null="epoch boundaries only")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.latest_checkpoint: tuple[str, int] | None = None  # (path, global step) of the newest one written
        self._saved_at: tuple[int, int] | None = None  # (epoch, step): a resumed run does not write it again

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            self._save(trainer, pl_module, LAST)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Where Lightning's own epoch checkpoints are written: validation done, the epoch-end hooks of the other
        # callbacks run (those of a Checkpoint, BestCheckpoint's, in the order of the callbacks config).
        self._save(trainer, pl_module, LAST)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = self.every_n_train_steps
        # The last batch's state is followed by the epoch's validation and its checkpoint.
        if n and trainer.global_step % n == 0 and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._save(trainer, pl_module, LAST_STEP)

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        # fast_dev_run: set outside Trainer's class (trainer/setup.py), unannotated
        if trainer.sanity_checking or trainer.fast_dev_run:  # type: ignore[attr-defined]
            return
        at = (trainer.current_epoch, trainer.global_step)
        if at == self._saved_at:
            return
        if not is_finite_model(pl_module):  # one host-device synchronisation per checkpoint
            log.warning("not writing %s at global step %d: the network has NaN or infinite weights", name, at[1])
            return
        path = self.dirpath / name
        self._saved_at = at
        # Atomic on a local disk: Lightning writes a temporary file and renames it. The module's on_save_checkpoint
        # raises instead when a step since the last check diverged; the file is then not written, nor named here.
        trainer.save_checkpoint(path, weights_only=False)
        self.latest_checkpoint = (str(path), trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"saved_at": self._saved_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_at = state_dict.get("saved_at")
        self._saved_at = tuple(saved_at) if saved_at is not None else None


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose file names count epochs from 1, as the paper, the docs and the analysis
    callbacks do (``best_epoch003.ckpt`` is the state after the third epoch), and that keeps the best score of
    the run it resumes although the resumed run writes into a run dir of its own (Lightning keeps it only for
    the same dir): the best epoch is the uninterrupted run's. Files outside this run's dir are never deleted."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None,
                               prefix: str | None = None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)
