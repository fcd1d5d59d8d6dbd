"""Callbacks for tests, given to train.py by their dotted path."""

from __future__ import annotations

import lightning as L


class InfiniteImagesOnRank(L.Callback):
    """Makes one process's batch infinite at one step, so that its loss diverges there and on no other rank."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(float("inf"))
