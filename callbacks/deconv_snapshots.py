"""``DeconvSnapshots`` (Fig. 4): at fixed epochs, each chosen map's strongest activation over a fixed probe
set, projected to pixels; the evolution grid (rows = maps, columns = epochs) at the end of fit."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch

from callbacks.scheduled_analysis import (
    ProbedAnalysis,
    check_layers,
    chosen_maps,
    evaluating,
    is_quiet,
    log_image,
    network_of,
)
from zfexp.checks import positive_int
from zfexp.figures.feature_tiles import strongest_unit_tiles
from zfexp.figures.grid import image_grid

PAPER_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
PAPER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


class DeconvSnapshots(ProbedAnalysis):
    """Args:
        epochs: when to project (1 = after the first epoch); paper: 1, 2, 5, 10, 20, 30, 40, 64.
        layers: conv layers to project.
        maps_per_layer: how many feature maps per layer, chosen once at random (seeded).
        probe_size: how many validation images the strongest activation is searched over (chosen once, seeded).
        seed: seeds both choices; they are stored in the checkpoint, so a resumed run keeps them.
    """

    run_at_fit_end = False  # the end of fit draws the evolution grid instead (on_train_end)

    def __init__(self, epochs: Sequence[int] = PAPER_EPOCHS, layers: Sequence[str] = PAPER_LAYERS,
                 maps_per_layer: int = 8, probe_size: int = 256, seed: int = 0):
        super().__init__(epochs, probe_size, seed)
        positive_int(f"{self.config_key}.maps_per_layer", maps_per_layer)
        self.layers, self.maps_per_layer = list(layers), maps_per_layer
        self.maps: dict[str, list[int]] = {}
        self.snapshots: dict[str, dict[int, torch.Tensor]] = {}  # layer -> epoch -> tiles [K, C, s, s]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        check_layers(f"{self.config_key}.layers", network_of(pl_module), self.layers)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        if not self.maps:  # chosen once; a resumed run keeps them (state_dict)
            self.maps = chosen_maps(net, self.layers, self.maps_per_layer, self.seed)
        images, _ = self.probe_batch(trainer, pl_module.device)
        with evaluating(net):
            for layer in self.layers:
                tiles = strongest_unit_tiles(net, images, layer, self.maps[layer])
                self.snapshots.setdefault(layer, {})[epoch] = tiles
                log_image(trainer, f"deconv/{layer}", image_grid(tiles[None]),
                          caption=f"{layer}: strongest activation of maps {self.maps[layer]}", epoch=epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_quiet(trainer) or not trainer.is_global_zero:
            return
        for layer, by_epoch in self.snapshots.items():
            epochs = sorted(by_epoch)
            grid = image_grid(torch.stack([by_epoch[e] for e in epochs], dim=1))  # rows = maps, columns = epochs
            log_image(trainer, f"deconv/{layer}_evolution", grid,
                      caption=f"{layer}: maps {self.maps[layer]} (rows) at epochs {epochs} (columns)")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "maps": self.maps, "snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.maps, self.snapshots = state["maps"], state["snapshots"]
