"""The strongest activations of chosen feature maps over a dataset (Fig. 2: the top 9 per map)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from zfexp.analysis.activations import check_feature_layers, layer_activations
from zfexp.errors import InvalidValueError
from zfexp.runs.progress import progress as show_progress


@dataclass
class TopActivationsResult:
    """Per chosen channel, the ``k`` images whose maps reach the highest activation.

    ``indices [K, k]`` dataset indices, ``positions [K, k, 2]`` (row, col) of the maximum in the map,
    ``values [K, k]`` the activations, sorted from the strongest; ``channels [K]``.
    """

    channels: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    values: torch.Tensor


class RunningTopK:
    """The running top-``k`` of one layer's chosen maps over batches, on the device: each image counts once per
    map, at its map's maximum."""

    def __init__(self, channels: list[int] | None, k: int):
        self.channels, self.k = channels, k
        self.chan: torch.Tensor | None = None  # [K], from the first batch
        # (values, positions, indices) so far, each [k, K]: None before the first batch
        self.top: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.width = 0

    def update(self, acts: torch.Tensor, first_index: int) -> None:
        """``acts [B, C_l, H, W]`` of the images ``first_index .. first_index + B - 1`` of the dataset."""
        if self.chan is None:
            chan = torch.arange(acts.shape[1]) if self.channels is None else torch.as_tensor(self.channels)
            self.chan = chan.to(device=acts.device, dtype=torch.long)
        val, pos = acts[:, self.chan].flatten(2).max(2)  # [B, K]
        idx = torch.arange(first_index, first_index + acts.shape[0], device=acts.device)[:, None].expand_as(val)
        if self.top is not None:
            values, positions, indices = self.top
            val, pos, idx = torch.cat([values, val]), torch.cat([positions, pos]), torch.cat([indices, idx])
        order = val.topk(min(self.k, val.shape[0]), dim=0).indices  # [k, K]
        self.top = val.gather(0, order), pos.gather(0, order), idx.gather(0, order)
        self.width = acts.shape[-1]

    def result(self) -> TopActivationsResult:
        """The top-``k`` of the batches so far: asked for after one at least (an empty dataloader is refused)."""
        assert self.chan is not None and self.top is not None, "RunningTopK.result() before any update"
        values, positions, indices = self.top
        rows_cols = torch.stack([positions // self.width, positions % self.width], -1)  # [k, K, 2]
        return TopActivationsResult(channels=self.chan.cpu(), indices=indices.T.cpu(),
                                    positions=rows_cols.transpose(0, 1).cpu(), values=values.T.cpu())


@torch.no_grad()
def top_activations_by_layer(model: nn.Module, dataloader: DataLoader, channels: Mapping[str, list[int] | None],
                             k: int = 9, device: torch.device | str | None = None, progress: bool = True,
                             ) -> dict[str, TopActivationsResult]:
    """The top-``k`` of the chosen maps of every layer of ``channels`` (``{layer: maps, or None for all}``) in one
    pass over ``dataloader`` (batches of ``(images, labels)`` in dataset order): one forward per batch gives
    every layer, stopping at the deepest."""
    if isinstance(getattr(dataloader, "sampler", None), RandomSampler):
        raise InvalidValueError("top_activations needs the dataset order to report indices: use a dataloader with "
                                "shuffle=False")
    if k < 1:
        raise InvalidValueError(f"k={k}: must be at least 1")
    check_feature_layers(model, list(channels))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    running = {layer: RunningTopK(maps, k) for layer, maps in channels.items()}
    seen = 0
    for images, *_ in show_progress(dataloader, len(dataloader), f"top-{k} of {', '.join(channels)}",
                                    enabled=progress):
        acts = layer_activations(model, images.to(device), list(channels))
        for layer, top in running.items():
            top.update(acts[layer], seen)
        seen += images.shape[0]
    if seen == 0:
        raise InvalidValueError("top_activations got an empty dataloader")
    return {layer: top.result() for layer, top in running.items()}


def top_activations(model: nn.Module, dataloader: DataLoader, layer: str, channels: list[int] | None = None,
                    k: int = 9, device: torch.device | str | None = None, progress: bool = True,
                    ) -> TopActivationsResult:
    """:func:`top_activations_by_layer` for one layer."""
    return top_activations_by_layer(model, dataloader, {layer: channels}, k, device, progress)[layer]
