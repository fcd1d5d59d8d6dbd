"""``TopActivations`` (Fig. 2): per layer and chosen map, the top-k validation activations projected to
pixels (3x3) beside the image patches they see (3x3)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from callbacks.deconv_snapshots import PAPER_LAYERS
from callbacks.scheduled_analysis import (
    ScheduledAnalysis,
    check_layers,
    chosen_maps,
    eval_dataset,
    evaluating,
    log_image,
    log_table,
    network_of,
)
from zfexp.analysis import top_activations_by_layer
from zfexp.checks import positive_int
from zfexp.figures.feature_tiles import top_k_sheet, top_k_table, top_k_tiles


class TopActivations(ScheduledAnalysis):
    """Args:
        layers: conv layers; maps_per_layer: maps per layer, chosen at random once (seeded);
        k: activations per map (9 in the paper, shown 3x3);
        every_n_epochs: also run every n epochs (``None``: only at the end of fit);
        max_images: cap on the validation images searched (``None``: all).
    """

    def __init__(self, layers: Sequence[str] = PAPER_LAYERS, maps_per_layer: int = 4, k: int = 9,
                 every_n_epochs: int | None = None, max_images: int | None = None, batch_size: int = 256,
                 seed: int = 0):
        super().__init__(every_n_epochs=every_n_epochs)
        positive_int(f"{self.config_key}.k", k)
        positive_int(f"{self.config_key}.maps_per_layer", maps_per_layer)
        self.layers, self.maps_per_layer, self.k = list(layers), maps_per_layer, k
        self.max_images, self.batch_size, self.seed = max_images, batch_size, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        check_layers(f"{self.config_key}.layers", network_of(pl_module), self.layers)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        dataset = eval_dataset(trainer)
        if self.max_images is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(self.max_images, len(dataset))))
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False)
        maps = chosen_maps(net, self.layers, self.maps_per_layer, self.seed)
        with evaluating(net):
            # Every layer's top-k from one pass over the validation images.
            tops = top_activations_by_layer(net, loader, maps, k=self.k, device=pl_module.device)
            for layer, top in tops.items():
                projections, patches = top_k_tiles(net, dataset, layer, top, pl_module.device)
                log_image(trainer, f"top{self.k}/{layer}", top_k_sheet(projections, patches),
                          caption=f"{layer} maps {maps[layer]}: top-{self.k} projections (left) and patches (right)",
                          epoch=epoch)
                # The same as a table with image cells, to sort and filter in W&B (the CSV has the numbers).
                rows, images = top_k_table(layer, top, projections, patches)
                log_table(trainer, f"top{self.k}/{layer}_table", rows, epoch=epoch, images=images)
