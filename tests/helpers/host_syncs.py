"""Counting, on a CPU, what would make the host wait for a CUDA device in a training step; given to train.py by
its dotted path (``+callbacks.count_syncs={_target_: tests.helpers.host_syncs.CountHostSyncs, out: ...}``)."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# Ops whose output size depends on the values (CUDA reads them back first), and reading a value (.item(), bool()).
SYNCING = {aten._local_scalar_dense.default, aten.bincount.default, aten.nonzero.default, aten.masked_select.default,
           aten._unique2.default, aten.unique_consecutive.default, aten.repeat_interleave.Tensor}


# A data loader making the next batch works on the host's own tensors (decoded images, labels), never the device's.
LOADER_FILES = ("/torch/utils/data/", "/torchdata/")


class HostSyncs(TorchDispatchMode):
    """The operations above, and indexing with a boolean mask (a ``nonzero`` on CUDA), with where they came from;
    not those of a data loader making the next batch."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING or (func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default)
                               and any(i is not None and i.dtype == torch.bool for i in args[1])):
            stack = traceback.extract_stack()[:-1]
            if not any(LOADING in f.filename for f in stack for LOADING in LOADER_FILES):
                where = [f for f in stack if "/torch/" not in f.filename][-3:]
                self.found.append(f"{func}: " + " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}"
                                                            for f in reversed(where)))
        return func(*args, **(kwargs or {}))


def one_hot_as_on_cuda(labels: torch.Tensor, num_classes: int = -1) -> torch.Tensor:
    """``F.one_hot`` as CUDA runs it: on a CPU it reads the labels' range back to check them, on CUDA the device
    asserts it. Without ``num_classes`` it reads the largest label on CUDA too."""
    if num_classes < 0:
        num_classes = int(labels.max()) + 1
    return torch.zeros(*labels.shape, num_classes, dtype=torch.long, device=labels.device).scatter_(
        -1, labels.long().unsqueeze(-1), 1)


class CountHostSyncs(L.Callback):
    """Counts per training step, from the start of one step to the start of the next (the step, every callback's
    and Lightning's own per-step work: logging, progress, checkpoints; not the loader's making the next batch),
    and writes ``{"per_step": [...], "found": [...]}`` to ``out`` (``{rank}`` in it is the process's rank)."""

    def __init__(self, out: str):
        self.out = out
        self.mode: HostSyncs | None = None
        self.per_step: list[int] = []
        self.found: list[str] = []
        self._one_hot = F.one_hot

    def on_train_start(self, trainer, pl_module):
        F.one_hot = one_hot_as_on_cuda

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._stop()
        self.mode = HostSyncs().__enter__()

    def on_validation_start(self, trainer, pl_module):
        self._stop()

    def on_train_epoch_end(self, trainer, pl_module):
        self._stop()

    def _stop(self):
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.per_step.append(len(self.mode.found))
            self.found += self.mode.found
            self.mode = None

    def on_train_end(self, trainer, pl_module):
        self._write(trainer)

    def on_exception(self, trainer, pl_module, exception):
        self._write(trainer)

    def _write(self, trainer):
        self._stop()
        F.one_hot = self._one_hot
        out = Path(self.out.format(rank=trainer.global_rank))
        out.write_text(json.dumps({"per_step": self.per_step, "found": self.found}))
