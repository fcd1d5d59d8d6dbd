"""``DeconvSnapshots`` (Fig. 4): at fixed epochs, each chosen map's strongest activation over a fixed probe
set, projected to pixels; the evolution grid (rows = maps, columns = epochs) at the end of fit."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch

from callbacks.network_layers import evaluating, layers_or_defaults, network_of
from callbacks.scheduled_analysis import ProbedAnalysis, is_quiet
from callbacks.training_outputs import TrainingSink, log_image
from zfexp.analysis.map_choice import chosen_maps
from zfexp.checks import positive_int
from zfexp.figures.grid import image_grid
from zfexp.recipes import deconv_snapshot

PAPER_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)


class DeconvSnapshots(ProbedAnalysis):
    """Args:
        epochs: when to project (1 = after the first epoch); paper: 1, 2, 5, 10, 20, 30, 40, 64.
        layers: conv layers (or blocks) to project; ``None``: conv1..conv5 when the network has them, else five
            of its convs spread over its depth.
        maps_per_layer: how many feature maps per layer, chosen once at random (seeded).
        probe_size: how many validation images the strongest activation is searched over (chosen once, seeded).
        seed: seeds both choices; they are stored in the checkpoint, so a resumed run keeps them.
    """

    run_at_fit_end = False  # the end of fit draws the evolution grid instead (on_train_end)

    def __init__(self, epochs: Sequence[int] = PAPER_EPOCHS, layers: Sequence[str] | None = None,
                 maps_per_layer: int = 8, probe_size: int = 256, seed: int = 0):
        super().__init__(epochs, probe_size, seed)
        positive_int(f"{self.config_key}.maps_per_layer", maps_per_layer)
        self.layers, self.maps_per_layer = None if layers is None else list(layers), maps_per_layer
        self.chosen_layers: list[str] = []  # the layers, named in setup (the network's defaults for None)
        self.maps: dict[str, list[int]] = {}
        self.snapshots: dict[str, dict[int, torch.Tensor]] = {}  # layer -> epoch -> tiles [K, C, s, s]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.chosen_layers = layers_or_defaults(f"{self.config_key}.layers", pl_module, self.layers)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        if not self.maps:  # chosen once; a resumed run keeps them (state_dict)
            self.maps = chosen_maps(net, self.chosen_layers, self.maps_per_layer, self.seed)
        images, _ = self.probe_batch(trainer, pl_module.device)
        with evaluating(net):
            tiles = deconv_snapshot(net, images, {layer: self.maps[layer] for layer in self.chosen_layers},
                                    TrainingSink(trainer, epoch))
        assert epoch is not None, "scheduled epochs only: the end of fit draws the grid (run_at_fit_end is off)"
        for layer, layer_tiles in tiles.items():
            self.snapshots.setdefault(layer, {})[epoch] = layer_tiles

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
