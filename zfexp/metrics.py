"""The paper's metrics as torchmetrics metrics: top-k error and mean class accuracy in percent, and the mean loss
weighted by images. Every state of them is a sum, so the states of several processes (DDP ranks, a checkpoint's
ranks) combine by adding them, and an update makes no host-device synchronisation: no checks of the values, and
counts made by comparisons and sums, never by ``torch.bincount`` (which on CUDA reads its input's range back to
the host first). The states are named and shaped as torchmetrics' ``MulticlassAccuracy`` names them (``tp``,
``fn``), so the metric states of a mid-epoch checkpoint written with it load into these."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class TopKError(Metric):
    """Top-k classification error in percent: the share of images whose label is not among the ``top_k`` highest
    scores. ``update(scores [B, num_classes], labels [B])``; labels are not checked (a check reads them back to
    the host): the datamodules give valid ones."""

    full_state_update = False

    def __init__(self, num_classes: int, top_k: int):
        super().__init__()
        self.num_classes, self.top_k = num_classes, top_k
        self.add_state("tp", torch.zeros(1, dtype=torch.long), dist_reduce_fx="sum")  # label within the top k
        self.add_state("fn", torch.zeros(1, dtype=torch.long), dist_reduce_fx="sum")  # label outside it

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        # The class chosen as torchmetrics chooses it (argmax for top-1: bf16 scores tie often), so the same counts.
        top = scores.argmax(1, keepdim=True) if self.top_k == 1 else scores.topk(self.top_k, dim=1).indices  # [B, k]
        hits = (top == labels.unsqueeze(1)).any(1).sum()
        self.tp += hits
        self.fn += labels.numel() - hits

    def compute(self) -> torch.Tensor:
        # torchmetrics' arithmetic (accuracy, then its complement), for the same float to the last digit.
        accuracy = self.tp.sum().float() / (self.tp + self.fn).sum().float()
        return 100.0 * (1.0 - accuracy)


class MeanClassAccuracy(Metric):
    """Mean over classes of the per-class accuracy, in percent: the metric of the paper's Caltech tables. Classes
    without an image in the data are left out of the mean (as ``sklearn.metrics.balanced_accuracy_score`` does).
    ``update(scores [B, num_classes], labels [B])``: the counts per class come from a ``[B, num_classes]``
    comparison with the class indices (one-hot), summed over the batch."""

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("tp", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")  # right, per class
        self.add_state("fn", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")  # wrong, per class
        self.register_buffer("classes", torch.arange(num_classes), persistent=False)

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        one_hot = labels.unsqueeze(1) == self.classes  # [B, num_classes]
        right = (scores.argmax(1) == labels).unsqueeze(1)  # [B, 1]
        self.tp += (one_hot & right).sum(0)
        self.fn += (one_hot & ~right).sum(0)

    def compute(self) -> torch.Tensor:
        images = self.tp + self.fn
        accuracy = self.tp.float() / images.float().clamp_min(1)  # [num_classes]
        present = (images > 0).float()
        # torchmetrics' arithmetic for its macro average, for the same float to the last digit.
        return 100.0 * (present * accuracy / present.sum()).sum()


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
