"""``TopActivations`` (Fig. 2): per layer and chosen map, the top-k validation activations projected to
pixels (3x3) beside the image patches they see (3x3)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.network_layers import evaluating, layers_or_defaults, network_of
from callbacks.scheduled_analysis import ScheduledAnalysis, eval_dataset
from callbacks.training_outputs import TrainingSink, inputs_of
from zfexp.analysis.map_choice import chosen_maps
from zfexp.checks import positive_int
from zfexp.recipes import top_k


class TopActivations(ScheduledAnalysis):
    """Args:
        layers: conv layers (``None``: conv1..conv5 when the network has them, else five of its convs spread
            over its depth); maps_per_layer: maps per layer, chosen at random once (seeded);
        k: activations per map (9 in the paper, shown 3x3);
        every_n_epochs: also run every n epochs (``None``: only at the end of fit);
        max_images: cap on the validation images searched (``None``: all).
    """

    def __init__(self, layers: Sequence[str] | None = None, maps_per_layer: int = 4, k: int = 9,
                 every_n_epochs: int | None = None, max_images: int | None = None, batch_size: int = 256,
                 seed: int = 0):
        super().__init__(every_n_epochs=every_n_epochs)
        positive_int(f"{self.config_key}.k", k)
        positive_int(f"{self.config_key}.maps_per_layer", maps_per_layer)
        self.layers, self.maps_per_layer, self.k = None if layers is None else list(layers), maps_per_layer, k
        self.chosen_layers: list[str] = []  # named in setup
        self.max_images, self.batch_size, self.seed = max_images, batch_size, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.chosen_layers = layers_or_defaults(f"{self.config_key}.layers", pl_module, self.layers)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        dataset = eval_dataset(trainer, self.max_images)
        maps = chosen_maps(net, self.chosen_layers, self.maps_per_layer, self.seed)
        with evaluating(net):
            # Every layer's top-k from one pass over the validation images; the sheets, and the same as tables
            # with image cells, to sort and filter in W&B (the CSV files have the numbers).
            top_k(net, dataset, maps, self.k, pl_module.device, TrainingSink(trainer, epoch),
                  inputs_of(trainer).class_names, self.batch_size)
