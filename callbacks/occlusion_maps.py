"""``OcclusionMaps`` (Fig. 7): a grey square slid over fixed probe images; the panel as a figure and the
numbers as a table."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.network_layers import evaluating, layers_or_defaults, network_of
from callbacks.scheduled_analysis import ProbedAnalysis
from callbacks.training_outputs import TrainingSink, inputs_of
from zfexp.analysis.layer_choice import default_conv_layers
from zfexp.checks import positive_int
from zfexp.errors import InvalidValueError
from zfexp.recipes import occlusion


class OcclusionMaps(ProbedAnalysis):
    """Args:
        epochs: when to run besides the end of fit (1 = after the first epoch).
        patch, stride: the square's side and step in pixels; ``None``: a quarter of the image side, and a
            quarter of the patch.
        feature_layer: the conv layer whose strongest map is followed (paper: layer 5); ``None``: conv5, else
            the network's last conv.
        probe_size: validation images (chosen once, seeded, kept in the checkpoint).
        batch_size: occluded copies per forward batch; ``None``: by the device's memory (as many as fit in a
            quarter of a GPU's free memory, on a CPU at most 64 within 1 GiB). The same maps with any.
    """

    def __init__(self, epochs: Sequence[int] = (), patch: int | None = None, stride: int | None = None,
                 feature_layer: str | None = None, probe_size: int = 4, batch_size: int | None = None, seed: int = 0):
        super().__init__(epochs, probe_size, seed)
        positive_int(f"{self.config_key}.patch", patch, null="a quarter of the image side")
        positive_int(f"{self.config_key}.stride", stride, null="a quarter of the patch")
        positive_int(f"{self.config_key}.batch_size", batch_size, null="by the device's memory")
        self.patch, self.stride, self.feature_layer, self.batch_size = patch, stride, feature_layer, batch_size
        self.chosen_layer: str | None = None  # named in setup (the network's default for None)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.chosen_layer = layers_or_defaults(f"{self.config_key}.feature_layer", pl_module,
                                               None if self.feature_layer is None else [self.feature_layer],
                                               default=lambda net, shape: default_conv_layers(net, shape)[-1:])[0]
        size = getattr(pl_module, "hparams", {}).get("input_size")
        if self.patch is not None and size is not None and self.patch > size:
            raise InvalidValueError(f"{self.config_key}.patch={self.patch} is larger than the {size}x{size} input; "
                                    f"valid: 1..{size}")

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        assert self.chosen_layer is not None, "named in setup"
        net = network_of(pl_module)
        images, labels = self.probe_batch(trainer, pl_module.device)
        with evaluating(net):
            occlusion(net, images, labels, inputs_of(trainer),
                      TrainingSink(trainer, epoch, rename=lambda key: self.key(key, "occlusion_maps")),
                      self.chosen_layer, self.patch, self.stride, self.batch_size)
