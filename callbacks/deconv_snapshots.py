"""``DeconvSnapshots`` (Fig. 4): at fixed epochs, each chosen map's strongest activation over a fixed probe
set, projected to pixels; the evolution grid (rows = maps, columns = epochs) at the end of fit."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from callbacks.common import (ScheduledAnalysis, check_epochs, check_epochs_fit, check_layers, eval_dataset,
                              evaluating, is_quiet, log_image, network_of, probe_indices, stack_dataset)
from zfexp.analysis import DeconvNet, receptive_field, receptive_field_size
from zfexp.render import crop_tiles, image_grid

PAPER_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
PAPER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def tile_size(net, layer: str, images: torch.Tensor) -> int:
    """Every crop of a layer is drawn at the size of its units' receptive field (at most the image)."""
    return min(receptive_field_size(net, layer), max(images.shape[-2:]))


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
                n_maps = net.get_submodule(layer).out_channels
                g = torch.Generator().manual_seed(self.seed + 1 + i)
                self.maps[layer] = torch.randperm(n_maps, generator=g)[: self.maps_per_layer].sort().values.tolist()

    run_at_fit_end = False  # the end of fit draws the evolution grid instead (on_fit_end)

    def due(self, epoch: int, trainer: L.Trainer) -> bool:
        return epoch in self.epochs

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        self._choose(trainer, net)
        images, _ = stack_dataset(eval_dataset(trainer), self.probe)
        with evaluating(net):
            for layer in self.layers:
                tiles = self._snapshot(net, images.to(pl_module.device), layer)
                self.snapshots.setdefault(layer, {})[epoch] = tiles
                log_image(trainer, f"deconv/{layer}_epoch{epoch:03d}", image_grid(tiles[None]),
                          caption=f"{layer}, epoch {epoch}: strongest activation of maps {self.maps[layer]}")

    def _snapshot(self, net, images: torch.Tensor, layer: str) -> torch.Tensor:
        """``[K, C, s, s]``: per chosen map, its strongest unit over the probe set, projected and cropped to
        the unit's receptive field."""
        deconv = DeconvNet(net)
        maps = self.maps[layer]
        acts = deconv.features(images, layer)[:, maps]  # [N, K, H_l, W_l]
        width = acts.shape[-1]
        per_image, where = acts.flatten(2).max(2)  # [N, K]
        best = per_image.argmax(0)  # [K] probe image of each map's strongest activation
        proj = deconv.project_units(images[best], layer, maps)  # [K, C, H, W]
        boxes = []
        for j, b in enumerate(best.tolist()):
            row, col = divmod(int(where[b, j]), width)
            boxes.append(receptive_field(net, layer, (row, col), tuple(images.shape[-2:])))
        return crop_tiles(proj.cpu(), boxes, tile_size(net, layer, images))

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
