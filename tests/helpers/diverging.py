"""Callbacks for tests, given to train.py by their dotted path."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class InfiniteImagesOnRank(L.Callback):
    """Makes one process's batch infinite at one step, so that its loss diverges there and on no other rank."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(float("inf"))


class WeightsBeforeStep(L.Callback):
    """Keeps the network's parameters as they are when step ``step`` starts; when the run stops with an error,
    writes to ``out`` (``{rank}``: the process's rank) whether they are bit-equal to the parameters then, and the
    global step the run stopped at."""

    def __init__(self, step: int, out: str):
        self.step, self.out = step, out
        self.before: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        same = self.before is not None and all(torch.equal(p, self.before[n]) for n, p in pl_module.named_parameters())
        Path(self.out.format(rank=trainer.global_rank)).write_text(json.dumps(
            {"bit_equal": same, "stopped_at": trainer.global_step, "error": type(exception).__name__}))
