"""``InvarianceCurves`` (Fig. 5): feature distances and true-class probability of fixed probe images under
vertical translation, scaling and rotation; the curves as a figure and the numbers as a table."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.scheduled_analysis import (
    ProbedAnalysis,
    class_names,
    evaluating,
    log_figure,
    log_table,
    network_of,
    occluder_fill,
)
from zfexp.analysis import TRANSFORMS, invariance_curves
from zfexp.analysis.activations import check_feature_layers
from zfexp.errors import InvalidValueError
from zfexp.figures.plots import invariance_figure


class InvarianceCurves(ProbedAnalysis):
    """Args:
        epochs: when to run besides the end of fit (1 = after the first epoch).
        transforms: any of translate, scale, rotate, with the paper's ranges.
        layers: conv or linear layers whose feature vectors are compared (paper: layers 1 and 7).
        probe_size: validation images (paper: 5; chosen once, seeded, kept in the checkpoint).
    """

    def __init__(self, epochs: Sequence[int] = (), transforms: Sequence[str] = TRANSFORMS,
                 layers: Sequence[str] = ("conv1", "fc7"), probe_size: int = 5, seed: int = 0):
        super().__init__(epochs, probe_size, seed)
        bad = [t for t in transforms if t not in TRANSFORMS]
        if bad or not transforms:
            raise InvalidValueError(f"{self.config_key}.transforms={list(transforms)}; valid: a non-empty list of "
                                    f"{', '.join(TRANSFORMS)}")
        self.transforms, self.layers = list(transforms), list(layers)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        try:
            check_feature_layers(network_of(pl_module), self.layers)
        except ValueError as err:
            raise InvalidValueError(f"{self.config_key}.layers: {err}") from err

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        images, labels = self.probe_batch(trainer, pl_module.device)
        fill = occluder_fill(trainer, images)
        with evaluating(net):
            curves = {t: invariance_curves(net, images, labels, t, layers=self.layers,
                                           fill=0.0 if fill is None else float(fill.mean()))
                      for t in self.transforms}
        log_figure(trainer, self.key("invariance/curves", "invariance_curves"),
                   invariance_figure(curves, labels.tolist(), class_names(trainer)),
                   caption=f"invariance to {', '.join(self.transforms)}", epoch=epoch)
        log_table(trainer, self.key("invariance/table", "invariance_curves"),
                  [row for c in curves.values() for row in c.table()], epoch=epoch)
