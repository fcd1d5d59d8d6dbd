"""The strongest activations of chosen feature maps over a dataset (Fig. 2: the top 9 per map)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from zfexp.analysis.activations import layer_activations
from zfexp.errors import InvalidValueError


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


@torch.no_grad()
def top_activations(model: nn.Module, dataloader: DataLoader, layer: str, channels: list[int] | None = None,
                    k: int = 9, device: torch.device | str | None = None, progress: bool = True,
                    ) -> TopActivationsResult:
    """One pass over ``dataloader`` (batches of ``(images, labels)`` in dataset order) keeping a running
    top-``k`` per channel on the device: each image counts once per channel, at its map's maximum."""
    if isinstance(getattr(dataloader, "sampler", None), RandomSampler):
        raise InvalidValueError("top_activations needs the dataset order to report indices: use a dataloader with "
                                "shuffle=False")
    if k < 1:
        raise InvalidValueError(f"k={k}: must be at least 1")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    best_val = best_idx = best_pos = None
    chan = None
    seen = 0
    for images, *_ in tqdm(dataloader, desc=f"top-{k} of {layer}", disable=not progress, leave=False):
        acts = layer_activations(model, images.to(device), [layer])[layer]  # [B, C_l, H, W]
        if chan is None:
            chan = torch.arange(acts.shape[1]) if channels is None else torch.as_tensor(channels, dtype=torch.long)
            chan = chan.to(device)
        flat = acts[:, chan].flatten(2)  # [B, K, H*W]
        val, pos = flat.max(2)  # [B, K]
        idx = torch.arange(seen, seen + images.shape[0], device=device).unsqueeze(1).expand_as(val)
        seen += images.shape[0]
        if best_val is not None:
            val, pos, idx = torch.cat([best_val, val]), torch.cat([best_pos, pos]), torch.cat([best_idx, idx])
        order = val.topk(min(k, val.shape[0]), dim=0).indices  # [k, K]
        best_val, best_pos, best_idx = val.gather(0, order), pos.gather(0, order), idx.gather(0, order)
        width = acts.shape[-1]
    if best_val is None:
        raise InvalidValueError("top_activations got an empty dataloader")
    positions = torch.stack([best_pos // width, best_pos % width], -1)  # [k, K, 2]
    return TopActivationsResult(channels=chan.cpu(), indices=best_idx.T.cpu(),
                                positions=positions.transpose(0, 1).cpu(),
                          values=best_val.T.cpu())
