"""The paper's metrics as torchmetrics metrics: top-k error and mean class accuracy in percent, and the mean loss
weighted by images. Every state of them is a sum, so the states of several processes (DDP ranks, a checkpoint's
ranks) combine by adding them, and an update makes no host-device synchronisation: no checks of the values, and
counts made by comparisons and sums, never by ``torch.bincount`` (which on CUDA reads its input's range back to
the host first). They give torchmetrics' ``MulticlassAccuracy``'s numbers to the last digit, with its states'
names (``tp``, ``fp``, ``fn``), so the metric states of a mid-epoch checkpoint written with it load into these."""

from __future__ import annotations

import torch
from torchmetrics import Metric

# What metrics.json lists first: the errors and losses of every run.
METRIC_KEYS = ("train/top1_err", "train/top5_err", "train/loss", "val/top1_err", "val/top5_err", "val/loss",
               "test/top1_err", "test/top5_err", "test/mean_class_acc", "test/loss")

# Kept from the end of fit: the last epoch's train errors and speed (TrainingSpeed's perf/), and analysis scalars
# such as FilterDiagnostics' filters/dead_frac/<layer> (val/ and test/ come from evaluating the best checkpoint
# afterwards).
FIT_METRIC_PREFIXES = ("train/", "perf/", "filters/")


class TopKError(Metric):
    """Top-k classification error in percent: the share of images whose label is not among the ``top_k`` highest
    scores. ``update(scores [B, num_classes], labels [B])``; labels are not checked (a check reads them back to
    the host): the datamodules give valid ones."""

    full_state_update = False
    # States made by add_state: nn.Module's attribute lookup alone would type them as Tensor | Module.
    tp: torch.Tensor
    fn: torch.Tensor

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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("tp", "fn"):  # torchmetrics kept a top-k (k > 1) count per class: their sum is the count
            if state_dict.get(prefix + name) is not None and state_dict[prefix + name].numel() != 1:
                state_dict[prefix + name] = state_dict[prefix + name].sum().view(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def compute(self) -> torch.Tensor:
        # torchmetrics' arithmetic (accuracy, then its complement), for the same float to the last digit.
        accuracy = self.tp.sum().float() / (self.tp + self.fn).sum().float()
        return 100.0 * (1.0 - accuracy)


class MeanClassAccuracy(Metric):
    """Mean over classes of the per-class accuracy, in percent: the metric of the paper's Caltech tables. As
    torchmetrics' macro average: a class neither in the data nor predicted is left out of the mean, one predicted
    but not in the data counts as 0. ``update(scores [B, num_classes], labels [B])``: the counts per class come
    from ``[B, num_classes]`` comparisons with the class indices (one-hot), summed over the batch."""

    full_state_update = False
    # States made by add_state, and a buffer: nn.Module's attribute lookup alone would type them as Tensor | Module.
    tp: torch.Tensor
    fn: torch.Tensor
    fp: torch.Tensor
    classes: torch.Tensor

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("tp", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")  # right, per class
        self.add_state("fn", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")  # wrong, per class
        self.add_state("fp", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")  # wrongly predicted
        self.register_buffer("classes", torch.arange(num_classes), persistent=False)

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        predicted = scores.argmax(1)
        is_label = labels.unsqueeze(1) == self.classes  # [B, num_classes] one-hot
        wrong = (predicted != labels).unsqueeze(1)  # [B, 1]
        self.tp += (is_label & ~wrong).sum(0)
        self.fn += (is_label & wrong).sum(0)
        self.fp += ((predicted.unsqueeze(1) == self.classes) & wrong).sum(0)

    def compute(self) -> torch.Tensor:
        images = self.tp + self.fn
        accuracy = self.tp.float() / images.float().clamp_min(1)  # [num_classes]
        counted = (images + self.fp > 0).float()
        # torchmetrics' arithmetic for its macro average, for the same float to the last digit.
        return 100.0 * (counted * accuracy / counted.sum()).sum()


class WeightedMean(Metric):
    """The mean of values weighted by counts: ``update(batch_mean_loss [], batch_size)`` per batch gives the mean
    over images. torchmetrics' ``MeanMetric`` checks each value for NaN (a host sync per update) and turns a
    Python weight into a device tensor (a copy); here the weight multiplies on the device."""

    full_state_update = False
    # States made by add_state: nn.Module's attribute lookup alone would type them as Tensor | Module.
    total: torch.Tensor
    weight: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int | float | torch.Tensor) -> None:
        self.total += value.detach().float() * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.weight
