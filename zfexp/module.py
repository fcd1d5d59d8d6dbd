"""The LightningModule: cross-entropy, SGD with momentum, LR annealed on a validation plateau, and the
paper's metrics (top-1 and top-5 error in %) for train / val / test."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.enums import GradClipAlgorithmType
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MetricCollection

from zfexp.checks import number_in, one_of, positive_number
from zfexp.divergence import StopOnDivergence
from zfexp.errors import InvalidValueError
from zfexp.metrics import MeanClassAccuracy, TopKError, WeightedMean
from zfexp.models.classifiers import build_classifier, with_lrn_convention
from zfexp.resuming import ExactResume

# The paper anneals "manually when the validation error plateaus": ReduceLROnPlateau on val/top1_err (in points).
LR_PLATEAU = MappingProxyType({"factor": 0.1, "patience": 2, "threshold": 0.1, "threshold_mode": "abs",
                               "min_lr": 1e-5})


def frozen_children(net: nn.Module, freeze: str | None) -> list[str]:
    """Names of the children of a flat paper-named network (``conv1 relu1 pool1 norm1 ... fc8``) from the first
    up to and including the block of paper layer ``freeze`` (its ReLU, pool, norm, dropout): the children before
    the next paper layer. ``None``: nothing."""
    if freeze is None:
        return []
    paper = [n for n in getattr(net, "layer_names", ()) if n != "fc8"]
    if freeze not in paper:
        raise InvalidValueError(f"freeze={freeze!r} is not a layer of this network that can be fixed; valid: "
                                f"{', '.join(paper)} (layers 1 up to this one stay fixed), or null (train everything)")
    names = [n for n, _ in net.named_children()]
    following = paper[paper.index(freeze) + 1:] + ["fc8"]
    return names[: names.index(following[0])]


class ImageClassifier(StopOnDivergence, ExactResume, L.LightningModule):
    """Wraps a network built from a config, so a checkpoint alone rebuilds it (``load_from_checkpoint``).

    Args:
        net: the network's config, a mapping with ``_target_`` (a model builder such as
            ``zfexp.models.zfnet``) and its options; ``num_classes``, ``in_channels`` and
            ``input_size`` are passed to the builder from here.
        lr, momentum, weight_decay: SGD settings (paper: 1e-2, 0.9; weight decay not given).
        lr_plateau: ``ReduceLROnPlateau`` options, monitoring ``val/top1_err`` (default: ``LR_PLATEAU``); ``null``
            for a constant LR.
        channels_last: run convolutions in NHWC memory layout (faster on tensor-core GPUs); ``"auto"``: when
            the trainer runs on a CUDA device.
        compile: run the training, validation and test steps through ``torch.compile(net)``. The compiled
            wrapper is kept outside the module's children: checkpoints hold the plain network's keys, and the
            analyses (forward hooks on ``self.net``) and ``self(images)`` run the uncompiled network.
        freeze: a paper layer name (``fc7``: layers 1-7); that layer and all before it are fixed: no gradient,
            not in the optimizer, and kept in eval mode (batch-norm statistics and dropout frozen too), as the
            paper's transfer experiments keep layers 1-7 fixed and train a new softmax.
        from_checkpoint: the module is rebuilt from a checkpoint (``load_from_checkpoint`` passes ``True``): no
            named weights are loaded (the checkpoint's come next), and a network config naming no LRN convention
            is one saved before the convention was a key (:func:`~zfexp.models.classifiers.with_lrn_convention`).
            Not a hyperparameter: never saved.

    Batches are ``(images [B, C, S, S], labels [B])``; evaluation images may be ``[B, n_crops, C, S, S]``,
    in which case the softmax is averaged over the crops (the paper's 10-crop evaluation).

    Resuming: checkpoints hold the global random generators' states and, when taken mid-epoch, the epoch's
    training metrics so far, so a resumed run continues with the numbers the uninterrupted run would have
    drawn and reports the same epoch metrics. ``lr``, ``momentum`` and ``weight_decay`` given to a resumed run
    that differ from the checkpoint's replace the restored optimizer's.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 224,
        lr: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_plateau: Mapping[str, Any] | None = LR_PLATEAU,
        channels_last: bool | str = "auto",
        freeze: str | None = None,
        compile: bool = False,
        from_checkpoint: bool = False,
    ):
        super().__init__()
        self.frozen: list[str] = []
        if isinstance(net, DictConfig):
            net = cast("dict[str, Any]", OmegaConf.to_container(net, resolve=True))  # a DictConfig's: a dict
        # Saved explicitly, so that the checkpoint says which formula it was trained with (see with_lrn_convention).
        net = with_lrn_convention(net, "torch" if from_checkpoint else "paper")
        positive_number("module.lr", lr, paper="0.01")
        number_in("module.momentum", momentum, 0, 1)
        number_in("module.weight_decay", weight_decay, 0, float("inf"))
        one_of("module.channels_last", channels_last, (True, False, "auto"), "auto: on a GPU")
        one_of("module.compile", compile, (True, False),
               "true: torch.compile the network for the training, validation and test steps")
        self.save_hyperparameters({"net": dict(net), "num_classes": num_classes, "in_channels": in_channels,
                                   "input_size": input_size, "lr": lr, "momentum": momentum,
                                   "weight_decay": weight_decay,
                                   "lr_plateau": dict(lr_plateau) if lr_plateau is not None else None,
                                   "channels_last": channels_last, "freeze": freeze, "compile": compile})
        self.net: nn.Module = build_classifier(net, num_classes, in_channels, input_size,
                                               from_checkpoint=from_checkpoint)
        # One input of the network's size: Lightning's model summary runs it to list every layer's output size
        # and FLOPs (for ZFNet the feature-map sizes of the paper's Fig. 3).
        self.example_input_array = torch.zeros(1, in_channels, input_size, input_size)
        self.channels_last = False  # decided in setup() for "auto"
        # torch.compile's wrapper of the network, made at the first step (see _step_net).
        self._compiled_net: Callable[[torch.Tensor], torch.Tensor] | None = None
        if channels_last is True:
            self._use_channels_last()
        self.frozen = frozen_children(self.net, freeze)
        for name in self.frozen:
            # Eval mode from the start: Lightning does not call train() when fit begins, it restores each
            # submodule's own mode after validation; train() below keeps them in eval mode too.
            self.net.get_submodule(name).requires_grad_(False).eval()
        top5 = min(5, num_classes)
        # No compute groups: finding them compares the metrics' states after the first update, a host sync.
        metrics = MetricCollection({"top1_err": TopKError(num_classes, 1), "top5_err": TopKError(num_classes, top5),
                                    "mean_class_acc": MeanClassAccuracy(num_classes)}, compute_groups=False)
        self.train_metrics = metrics.clone(prefix="train/")
        self.train_loss = WeightedMean()  # the epoch's mean training loss, kept in mid-epoch checkpoints
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Mean losses over images: under DDP, ranks with shares of different sizes combine exactly.
        self.val_loss, self.test_loss = WeightedMean(), WeightedMean()
        self._logged_this_epoch: set[str] = set()  # the stages whose metric objects Lightning has this epoch

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: bool | None = True, **kwargs):
        """Lightning's, reading safely by default (``weights_only=True``: tensors and plain values, never code;
        ``False`` only for a file you trust), with the network config of checkpoints older than
        ``model.lrn.convention`` read as they were trained (:func:`~zfexp.models.classifiers.with_lrn_convention`)."""
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=weights_only, from_checkpoint=True, **kwargs)

    def _use_channels_last(self) -> None:
        self.channels_last = True
        self.net = self.net.to(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        if self.hparams["channels_last"] == "auto" and self.trainer.strategy.root_device.type == "cuda":
            self._use_channels_last()

    def train(self, mode: bool = True) -> ImageClassifier:
        """As ``nn.Module.train``, but the fixed layers always stay in eval mode."""
        super().train(mode)
        for name in self.frozen:
            self.net.get_submodule(name).eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, S]`` images -> ``[B, num_classes]`` logits, by the plain (uncompiled) network."""
        return self.net(self._input_layout(images))

    def _input_layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def _step_net(self, images: torch.Tensor) -> torch.Tensor:
        """The training, validation and test steps' forward: through ``torch.compile`` with ``compile=True``.

        The compiled wrapper is stored past ``nn.Module.__setattr__``, so it is no child: no ``_orig_mod.`` keys in
        ``state_dict``, and ``.to()``/``train()`` reach the network it wraps through ``self.net``."""
        if not self.hparams["compile"]:
            return self(images)
        compiled = self._compiled_net
        if compiled is None:
            # fallback_random: dropout draws its masks from torch's generator, as in eager mode, so compiling
            # changes the speed of a run and not its numbers (inductor's own RNG would draw other masks).
            compiled = torch.compile(self.net, options={"fallback_random": True})
            object.__setattr__(self, "_compiled_net", compiled)
        return compiled(self._input_layout(images))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self._step_net(images)
        loss = F.cross_entropy(logits, labels)
        self.step_loss = loss.detach()  # checked on the device after backward (StopOnDivergence)
        self.train_metrics.update(logits.detach(), labels)
        self.train_loss.update(loss, labels.numel())
        self._log_epoch_metrics("train", self.train_metrics, self.train_loss)
        return loss

    def _log_epoch_metrics(self, stage: str, metrics: MetricCollection, mean_loss: WeightedMean) -> None:
        """Hand the epoch's metric objects to Lightning once per epoch (it computes and resets them at the epoch's
        end; they are updated every step): a ``self.log`` per step would cost host time for nothing. Under DDP
        torchmetrics sums every rank's states, so the epoch's values are over all the images once, whatever the
        size of each rank's share."""
        if stage in self._logged_this_epoch:
            return
        self._logged_this_epoch.add(stage)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=stage == "val")
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")

    def on_train_epoch_start(self) -> None:
        self._logged_this_epoch.discard("train")

    def on_validation_epoch_start(self) -> None:
        self._logged_this_epoch.discard("val")

    def on_test_epoch_start(self) -> None:
        self._logged_this_epoch.discard("test")

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, mean_loss: WeightedMean,
                   stage: str) -> None:
        images, labels = batch
        if images.dim() == 5:  # [B, n_crops, C, S, S]: average the softmax over the crops
            b, n = images.shape[:2]
            probs = F.softmax(self._step_net(images.flatten(0, 1)).float(), dim=-1).view(b, n, -1).mean(1)
            loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels)
            scores = probs
        else:
            logits = self._step_net(images)
            loss = F.cross_entropy(logits, labels)
            scores = logits
        metrics.update(scores, labels)
        mean_loss.update(loss, labels.numel())
        self._log_epoch_metrics(stage, metrics, mean_loss)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, self.val_loss, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, self.test_loss, "test")

    def on_validation_epoch_end(self) -> None:
        """Step the plateau scheduler on this epoch's validation error here, not after the epoch's end as
        Lightning would: the epoch's checkpoint, written at the epoch's end hooks, then holds the stepped
        scheduler, and a run resumed from it anneals the LR as the uninterrupted run did."""
        trainer = self.trainer
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, ReduceLROnPlateau):
                assert config.monitor is not None, "Lightning requires a monitor for ReduceLROnPlateau"
                config.scheduler.step(self.val_metrics.compute()[config.monitor])

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if isinstance(scheduler, ReduceLROnPlateau):
            return  # stepped in on_validation_epoch_end
        super().lr_scheduler_step(scheduler, metric)

    def configure_optimizers(self):
        hp = self.hparams
        trainable = [p for p in self.parameters() if p.requires_grad]
        # Fused: it takes the divergence flag as found_inf and skips a diverged step's update on the device. On a CPU
        # the same numbers as the default (foreach) SGD, bit for bit (measured).
        optimizer = torch.optim.SGD(trainable, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"],
                                    fused=True)
        if not hp["lr_plateau"]:
            return optimizer
        # The paper anneals "manually when the validation error plateaus": automated here.
        scheduler = ReduceLROnPlateau(optimizer, mode="min", **hp["lr_plateau"])
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/top1_err", "interval": "epoch"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's, but with bf16 or float32 a fused optimizer's gradients are clipped too: Lightning refuses
        to clip for an optimizer that unscales AMP's gradients itself, which matters only under fp16's loss scale."""
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and getattr(plugin, "scaler", None) is None:
            # As Lightning's clip_gradients reads the algorithm (the trainer gives it as the enum already).
            algorithm = GradClipAlgorithmType((gradient_clip_algorithm or "norm").lower())
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

