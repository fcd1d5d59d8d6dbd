"""``InvarianceCurves`` (Fig. 5): feature distances and true-class probability of fixed probe images under
vertical translation, scaling and rotation; the curves as a figure and the numbers as a table."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.network_layers import evaluating, layers_or_defaults, network_of
from callbacks.scheduled_analysis import ProbedAnalysis
from callbacks.training_outputs import TrainingSink, inputs_of
from zfexp.analysis import TRANSFORMS
from zfexp.analysis.layer_choice import default_invariance_layers
from zfexp.errors import InvalidValueError
from zfexp.recipes import invariance


class InvarianceCurves(ProbedAnalysis):
    """Args:
        epochs: when to run besides the end of fit (1 = after the first epoch).
        transforms: any of translate, scale, rotate, with the paper's ranges.
        layers: conv or linear layers whose feature vectors are compared (paper: layers 1 and 7); ``None``: conv1
            and fc7, else the network's first conv and its last hidden linear (or last conv).
        probe_size: validation images (paper: 5; chosen once, seeded, kept in the checkpoint).
    """

    def __init__(self, epochs: Sequence[int] = (), transforms: Sequence[str] = TRANSFORMS,
                 layers: Sequence[str] | None = None, probe_size: int = 5, seed: int = 0):
        super().__init__(epochs, probe_size, seed)
        bad = [t for t in transforms if t not in TRANSFORMS]
        if bad or not transforms:
            raise InvalidValueError(f"{self.config_key}.transforms={list(transforms)}; valid: a non-empty list of "
                                    f"{', '.join(TRANSFORMS)}")
        self.transforms, self.layers = list(transforms), None if layers is None else list(layers)
        self.chosen_layers: list[str] = []  # named in setup

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.chosen_layers = layers_or_defaults(f"{self.config_key}.layers", pl_module, self.layers,
                                                default=default_invariance_layers, projected=False)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        images, labels = self.probe_batch(trainer, pl_module.device)
        with evaluating(net):
            invariance(net, images, labels, self.transforms, self.chosen_layers, inputs_of(trainer),
                       TrainingSink(trainer, epoch, rename=lambda key: self.key(key, "invariance_curves")))
