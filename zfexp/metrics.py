"""The paper's metrics as torchmetrics metrics: top-k error and mean class accuracy in percent, and the mean loss
weighted by images. Every state of them is a sum, so the states of several processes (DDP ranks, a checkpoint's
ranks) combine by adding them, and an update makes no host-device synchronisation (no checks of the values)."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy


class TopKError(MulticlassAccuracy):
    """Top-k classification error in percent: ``100 * (1 - top-k accuracy)``, micro-averaged. Labels are not
    checked on each update (a check reads the labels back to the host); the datamodules give valid ones."""

    def __init__(self, num_classes: int, top_k: int):
        super().__init__(num_classes=num_classes, top_k=top_k, average="micro", validate_args=False)

    def compute(self) -> torch.Tensor:
        return 100.0 * (1.0 - super().compute())


class MeanClassAccuracy(MulticlassAccuracy):
    """Mean over classes of the per-class accuracy, in percent: the metric of the paper's Caltech tables."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes=num_classes, top_k=1, average="macro", validate_args=False)

    def compute(self) -> torch.Tensor:
        return 100.0 * super().compute()


class WeightedMean(Metric):
    """The mean of values weighted by counts: ``update(batch_mean_loss [], batch_size)`` per batch gives the mean
    over images. torchmetrics' ``MeanMetric`` checks each value for NaN (a host sync per update) and turns a
    Python weight into a device tensor (a copy); here the weight multiplies on the device."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int | float | torch.Tensor) -> None:
        self.total += value.detach().float() * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.weight
