"""Exact resuming for a LightningModule: what a checkpoint holds beyond Lightning's own (the global random
generators' states, the epoch's training metrics so far when taken mid-epoch), and the optimizer settings a
resumed run may change. A run resumed from a checkpoint continues with the numbers the uninterrupted run would
have drawn and reports the same epoch metrics."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torchmetrics import Metric, MetricCollection

from zfexp.random_state import random_state, set_random_state

if TYPE_CHECKING:
    # The host class, for the type checker alone: at runtime the mixin derives from object, and L.LightningModule
    # comes after it in the module's bases.
    from lightning.pytorch import LightningModule as _Host

    from zfexp.metrics import WeightedMean
else:
    _Host = object

log = logging.getLogger(__name__)

# Optimizer settings that a resumed run may change: a value given now that differs from the checkpoint's wins
# over the restored optimizer's (lowering module.lr is how a diverged run is recovered).
RESUMABLE_SETTINGS = ("lr", "momentum", "weight_decay")


class ExactResume(_Host):
    """LightningModule hooks for an exact resume, mixed in before ``L.LightningModule``. The module has
    ``train_metrics`` (a torchmetrics collection), ``train_loss`` (a metric) and the hyperparameters
    :data:`RESUMABLE_SETTINGS`."""

    # The module's, set in its __init__.
    train_metrics: MetricCollection
    train_loss: WeightedMean
    _restored: dict[str, Any] | None = None  # what on_load_checkpoint read, applied at on_train_start

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["random_state"] = random_state()
        trainer = self._trainer
        if trainer is not None and trainer.training and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # Mid-epoch: the epoch's metrics so far (torchmetrics keeps its states out of state_dict). At the
            # epoch's end they belong to the finished epoch, and the resumed run starts the next one afresh.
            # Under DDP every rank calls this hook and each holds its share: the checkpoint keeps their sum.
            checkpoint["train_metric_states"] = {"metrics": _metric_states(self.train_metrics, trainer.strategy),
                                                 "loss": _metric_states(self.train_loss, trainer.strategy)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hparams = checkpoint.get("hyper_parameters") or {}
        self._restored = {"random_state": checkpoint.get("random_state"),
                          "train_metric_states": checkpoint.get("train_metric_states"),
                          "hyper_parameters": {k: hparams.get(k) for k in RESUMABLE_SETTINGS}}

    def on_train_start(self) -> None:
        """Apply a resumed checkpoint's random states, epoch metrics and changed optimizer settings, now that
        Lightning has restored the optimizer and the sanity check has run."""
        restored, self._restored = self._restored, None
        if restored is None:
            return
        if restored.get("random_state") is not None:
            set_random_state(restored["random_state"])
        # The epoch's metrics so far: the sum of every rank's share, taken on by rank zero alone (the other ranks
        # start from zero), so that the epoch's synced metrics add each share once, with any number of ranks.
        if restored.get("train_metric_states") is not None and self.trainer.is_global_zero:
            _load_metric_states(self.train_metrics, restored["train_metric_states"]["metrics"])
            _load_metric_states(self.train_loss, restored["train_metric_states"]["loss"])
            self.train_metrics.to(self.device), self.train_loss.to(self.device)
        before = restored.get("hyper_parameters") or {}
        for key in RESUMABLE_SETTINGS:
            old, new = before.get(key), self.hparams[key]
            if old is None or old == new:
                continue
            for optimizer in self.trainer.optimizers:
                for group in optimizer.param_groups:
                    current, group[key] = group[key], new
                    if key == "lr":
                        group["initial_lr"] = new
            log.info("module.%s=%g replaces the checkpoint's %g (its optimizer was at %g)", key, new, old, current)


def _metric_states(metric: Metric | MetricCollection, strategy: Any = None) -> dict[str, Any]:
    """A torchmetrics metric's (or collection's) accumulated states, which its ``state_dict`` leaves out; with a
    DDP ``strategy``, summed over the ranks (a collective: every rank calls it). Every state of our metrics is a
    sum (:mod:`zfexp.metrics`)."""
    metric.persistent(True)
    try:
        states = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in metric.state_dict().items()}
    finally:
        metric.persistent(False)
    if strategy is not None and strategy.world_size > 1:
        states = {k: strategy.reduce(v, reduce_op="sum") if isinstance(v, torch.Tensor) else v
                  for k, v in states.items()}
    return states


def _load_metric_states(metric: Metric | MetricCollection, states: dict[str, Any]) -> None:
    metric.persistent(True)
    try:
        metric.load_state_dict(states, strict=False)
    finally:
        metric.persistent(False)
