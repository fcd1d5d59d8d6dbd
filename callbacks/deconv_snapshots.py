"""``DeconvSnapshots`` (Fig. 4): at fixed epochs, each chosen map's strongest activation over a fixed probe
set, projected to pixels; the evolution grid (rows = maps, columns = epochs) at the end of fit."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from callbacks.common import (ScheduledAnalysis, check_epochs, check_epochs_fit, check_layers, eval_dataset,
                              evaluating, is_quiet, log_image, network_of, probe_indices, stack_dataset)
from zfexp.pictures import random_maps, strongest_unit_tiles
from zfexp.render import image_grid

PAPER_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
PAPER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


class DeconvSnapshots(ScheduledAnalysis):
    """Args:
        epochs: when to project (1 = after the first epoch); paper: 1, 2, 5, 10, 20, 30, 40, 64.
        layers: conv layers to project.
        maps_per_layer: how many feature maps per layer, chosen once at random (seeded).
        probe_size: how many validation images the strongest activation is searched over (chosen once, seeded).
        seed: seeds both choices; they are stored in the checkpoint, so a resumed run keeps them.
    """

    def __init__(self, epochs: Sequence[int] = PAPER_EPOCHS, layers: Sequence[str] = PAPER_LAYERS,
                 maps_per_layer: int = 8, probe_size: int = 256, seed: int = 0):
        if maps_per_layer < 1 or probe_size < 1:
            raise ValueError(f"DeconvSnapshots: maps_per_layer={maps_per_layer} and probe_size={probe_size} "
                             "must be positive")
        self.epochs = check_epochs("DeconvSnapshots", epochs)
        self.layers = list(layers)
        self.maps_per_layer, self.probe_size, self.seed = maps_per_layer, probe_size, seed
        self.probe: torch.Tensor | None = None  # dataset indices
        self.maps: dict[str, list[int]] = {}
        self.snapshots: dict[str, dict[int, torch.Tensor]] = {}  # layer -> epoch -> tiles [K, C, s, s]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_layers("DeconvSnapshots", network_of(pl_module), self.layers)
        if stage == "fit":
            check_epochs_fit("DeconvSnapshots", self.epochs, trainer)

    def _choose(self, trainer: L.Trainer, net) -> None:
        if self.probe is None:
            self.probe = probe_indices(len(eval_dataset(trainer)), self.probe_size, self.seed)
        for i, layer in enumerate(self.layers):
            if layer not in self.maps:
                self.maps[layer] = random_maps(net, layer, self.maps_per_layer, self.seed + 1 + i)

    run_at_fit_end = False  # the end of fit draws the evolution grid instead (on_fit_end)

    def due(self, epoch: int, trainer: L.Trainer) -> bool:
        return epoch in self.epochs

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        self._choose(trainer, net)
        images, _ = stack_dataset(eval_dataset(trainer), self.probe)
        with evaluating(net):
            for layer in self.layers:
                tiles = strongest_unit_tiles(net, images.to(pl_module.device), layer, self.maps[layer])
                self.snapshots.setdefault(layer, {})[epoch] = tiles
                log_image(trainer, f"deconv/{layer}_epoch{epoch:03d}", image_grid(tiles[None]),
                          caption=f"{layer}, epoch {epoch}: strongest activation of maps {self.maps[layer]}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_quiet(trainer) or not trainer.is_global_zero:
            return
        for layer, by_epoch in self.snapshots.items():
            epochs = sorted(by_epoch)
            grid = image_grid(torch.stack([by_epoch[e] for e in epochs], dim=1))  # rows = maps, columns = epochs
            log_image(trainer, f"deconv/{layer}_evolution", grid,
                      caption=f"{layer}: maps {self.maps[layer]} (rows) at epochs {epochs} (columns)")

    def state_dict(self) -> dict:
        return {"probe": self.probe, "maps": self.maps, "snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        self.probe, self.maps, self.snapshots = state["probe"], state["maps"], state["snapshots"]
