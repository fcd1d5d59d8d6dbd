"""``FilterDiagnostics`` (Fig. 6): the layer-1 filters as an image, the fraction of dead filters per conv
layer (never active on the probe set) and filter RMS statistics, as scalars."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.network_layers import evaluating, network_of
from callbacks.scheduled_analysis import ProbedAnalysis
from callbacks.training_outputs import TrainingSink
from zfexp.analysis import conv_layers
from zfexp.models.classifiers import first_conv
from zfexp.recipes import filters


class FilterDiagnostics(ProbedAnalysis):
    """Args:
        epochs: when to run (1 = after the first epoch); the end of fit always runs.
        first_layer: the conv layer whose filters are drawn (paper: conv1); ``None``: the first conv the
            network runs.
        probe_size: validation images on which a filter must fire at least once not to count as dead.
    """

    def __init__(self, epochs: Sequence[int] = (), first_layer: str | None = None, probe_size: int = 256,
                 seed: int = 0):
        super().__init__(epochs, probe_size, seed)
        self.first_layer = first_layer
        self.chosen_layer: str | None = None  # named in setup (the network's first conv for None)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        net = network_of(pl_module)
        self.chosen_layer = self.first_layer or first_conv(net, pl_module.hparams.get("input_size", 224))[0]
        conv_layers(net, [self.chosen_layer], key=f"{self.config_key}.first_layer")  # a bad layer named before training

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        assert self.chosen_layer is not None, "named in setup"
        net = network_of(pl_module)
        images, _ = self.probe_batch(trainer, pl_module.device)
        with evaluating(net):
            filters(net, self.chosen_layer, images, TrainingSink(trainer, epoch))
