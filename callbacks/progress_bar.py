"""Training progress in every terminal and log: Lightning's rich bar when stdout is a terminal; elsewhere
(SLURM, ``nohup``, a Ray worker, a pipe), where a live bar prints nothing readable, plain log lines: one every
``every_n_steps`` training steps and one per epoch with the epoch's train and val metrics. Hydra's logging
puts them in stdout and the run's ``train.log``."""

from __future__ import annotations

import logging
import time
from typing import Protocol, runtime_checkable

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from zfexp.checks import positive_int
from zfexp.runs.config_groups import config_key
from zfexp.runs.progress import duration, on_terminal

log = logging.getLogger("zfexp.progress")


class RichOrLogProgressBar(RichProgressBar):
    """The progress bar for where the job runs: Rich's live bar when stdout is a terminal, else the log lines
    of :class:`PlainProgressBar` (``terminal``: decide instead of looking at stdout). What ``callbacks=default``
    gives every run; ``every_n_steps`` is the interval of the lines."""

    def __init__(self, every_n_steps: int = 50, terminal: bool | None = None):
        super().__init__()
        positive_int(f"{config_key(type(self).__name__)}.every_n_steps", every_n_steps)
        live = terminal if terminal is not None else on_terminal()
        self.lines = None if live else PlainProgressBar(every_n_steps)

    @property
    def is_enabled(self) -> bool:
        return self.lines is None and super().is_enabled  # with the lines, Rich's bar draws nothing

    def enable(self) -> None:
        super().enable()
        if self.lines is not None:
            self.lines.enable()

    def disable(self) -> None:
        super().disable()
        if self.lines is not None:
            self.lines.disable()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.lines is not None:
            self.lines.setup(trainer, pl_module, stage)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.lines is not None:
            self.lines.on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.lines is not None:
            self.lines.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.lines is not None:
            self.lines.on_train_epoch_end(trainer, pl_module)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        loss = train_loss_step(trainer, pl_module) if trainer.training else None
        return {**metrics, "train/loss_step": f"{loss:.4g}"} if loss is not None else metrics

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_test_end(trainer, pl_module)
        if self.lines is not None:
            self.lines.on_test_end(trainer, pl_module)


class PlainProgressBar(ProgressBar):
    """Progress as log lines (rank zero only)::

        epoch 3/70 step 200/938 (21%): train/loss_step 1.234, 61.2 steps/s, 12s left in the epoch
        epoch 3/70 done in 15s: train/loss 1.102, train/top1_err 38.20, val/loss 0.981, ..., perf/train_img_per_s 2552
        test: test/loss 0.990, test/top1_err 33.40, ...
    """

    def __init__(self, every_n_steps: int = 50):
        super().__init__()
        positive_int(f"{config_key(type(self).__name__)}.every_n_steps", every_n_steps)
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._epoch_start = 0.0

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def _active(self, trainer: L.Trainer) -> bool:
        return self._enabled and trainer.is_global_zero and not trainer.sanity_checking

    def _epoch(self, trainer: L.Trainer) -> str:
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{of}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        done, total = batch_idx + 1, self.total_train_batches
        if not self._active(trainer) or done % self.every_n_steps or done == total:
            return
        elapsed = time.perf_counter() - self._epoch_start
        rate = done / elapsed if elapsed > 0 else float("inf")
        where = f"{done}/{total} ({100 * done // total}%)" if isinstance(total, int) and total else str(done)
        left = f", {duration((total - done) / rate)} left in the epoch" if isinstance(total, int) and total else ""
        loss = train_loss_step(trainer, pl_module)
        shown = f"train/loss_step {loss:.4g}, " if loss is not None else ""
        log.info("%s step %s: %s%.1f steps/s%s", self._epoch(trainer), where, shown, rate, left)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation has run by now, so the epoch's val/ numbers are in callback_metrics beside the train/ ones.
        if not self._active(trainer):
            return
        metrics = _numbers(trainer.callback_metrics, ("train/", "val/", "perf/"), skip="_step")
        log.info("%s done in %s: %s", self._epoch(trainer), duration(time.perf_counter() - self._epoch_start),
                 metrics or "no metrics logged")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            log.info("test: %s", _numbers(trainer.callback_metrics, ("test/",)) or "no metrics logged")


@runtime_checkable
class _HostLoss(Protocol):
    """A module that has its newest training loss on the host (:class:`zfexp.divergence.StopOnDivergence`)."""

    @property
    def latest_train_loss(self) -> float | None: ...


def train_loss_step(trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
    """The newest training loss the host has, for display: the module's ``latest_train_loss`` (read without
    waiting for the device, :class:`zfexp.module.ImageClassifier`), else a ``train/loss_step`` a module logs."""
    if isinstance(pl_module, _HostLoss):  # it has the attribute
        return pl_module.latest_train_loss
    value = trainer.callback_metrics.get("train/loss_step")
    return float(value) if value is not None else None


def _numbers(metrics: dict, prefixes: tuple[str, ...], skip: str | None = None) -> str:
    """``"train/loss 1.102, val/top1_err 33.10"``: the scalar metrics whose names start with ``prefixes``, in
    that order of prefixes and sorted within each."""
    out = []
    for prefix in prefixes:
        for name in sorted(k for k in metrics if k.startswith(prefix) and not (skip and k.endswith(skip))):
            value = metrics[name]
            if getattr(value, "numel", lambda: 1)() == 1:
                out.append(f"{name} {float(value):.4g}")
    return ", ".join(out)
