"""``FilterRenorm``: the paper's filter renormalisation after every optimizer step, with per-epoch counts."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.network_layers import network_of
from zfexp.analysis import FilterRenormalizer, conv_layers
from zfexp.checks import positive_number
from zfexp.errors import InvalidValueError
from zfexp.runs.config_groups import config_key


class FilterRenorm(Callback):
    """After every optimizer step, rescale each conv filter whose RMS exceeds ``radius`` to ``radius``.

    Logs ``renorm/<layer>``: how many distinct filters of the layer were rescaled at least once during the
    epoch (to every logger, step = epoch end).

    Args:
        radius: the fixed RMS radius (paper: 0.1).
        layers: conv layer names (``conv1`` ... ``conv5``); ``None`` for every conv layer.
        enabled: ``False`` turns it off while keeping it in the config (Fig. 6 (a): without renormalisation).
    """

    def __init__(self, radius: float = 0.1, layers: Sequence[str] | None = None, enabled: bool = True):
        self.config_key = config_key(type(self).__name__)  # names it in messages: callbacks.filter_renorm
        positive_number(f"{self.config_key}.radius", radius, paper="0.1")
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
            raise InvalidValueError(f"{self.config_key}.layers={layers!r}: must be a list of layer names, or null "
                                    "(every conv layer)")
        self.radius = float(radius)
        self.enabled = bool(enabled)
        self.layers = list(layers) if layers is not None else None
        self._last_step = -1
        self._trained: list[str] = []
        self._renorm: FilterRenormalizer | None = None  # its weights, found once, when training starts
        self._hit: torch.Tensor | None = None  # [filters of every layer]: rescaled at least once this epoch

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # fails before training on an unknown layer name
        convs = conv_layers(network_of(pl_module), self.layers, key=f"{self.config_key}.layers")
        # Fixed layers (transfer with ``freeze``) are not renormalised: their weights must stay as loaded.
        self._trained = [name for name, conv in convs.items() if conv.weight.requires_grad]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._renorm = FilterRenormalizer(conv_layers(network_of(pl_module), self._trained), self.radius)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hit = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # global_step counts optimizer steps, so gradient accumulation and skipped steps are handled.
        if not self.enabled or not self._trained or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        assert self._renorm is not None, "made when training starts"
        # A module that skips a diverged step's update on the device (zfexp's ImageClassifier) keeps its flag there:
        # the filters of a skipped step stay as they were too.
        rescaled = self._renorm(skip=getattr(getattr(pl_module, "divergence", None), "diverged_on_device", None))
        self._hit = rescaled if self._hit is None else self._hit.logical_or_(rescaled)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._hit is None:
            return
        assert self._renorm is not None, "made when training starts, before any batch set _hit"
        for name, mask in self._renorm.per_layer(self._hit).items():
            # Every rank holds the same weights, so the same count; synced all the same, so that the logged value
            # is defined under DDP whatever a rank saw (and Lightning has nothing to warn about).
            pl_module.log(f"renorm/{name}", mask.sum().float(), on_step=False, on_epoch=True, sync_dist=True)
