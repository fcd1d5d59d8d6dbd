"""The deconvnet on any network: the way down as autograd's backward of the network's own forward, every ReLU
(module or functional) inverted by the rule, seeded at the chosen units.

The forward pass is recorded once for the images (:class:`~zfexp.analysis.graph.FeatureSites`, with the rule's
ReLUs and contrast normalisation passed through); the K maps then go down together, one batched backward
(``torch.autograd.grad(..., is_grads_batched=True)``), in chunks that fit in memory. What autograd's backward
does is the paper's inverse where the paper has one: max-pooling routes to the switches and overlapping windows
add up, a conv is its transposed filter; and the exact inverse of the rest: a residual addition sends the
signal down both branches, a concatenation splits it, batch norm in eval mode scales each channel (folded into
the filters before it), an average pool spreads it.
"""

from __future__ import annotations

import torch
from torch import nn

from zfexp.analysis.graph import watch_sites
from zfexp.analysis.network import eval_mode
from zfexp.errors import InvalidValueError


def recorded_features(model: nn.Module, images: torch.Tensor, layer: str, rule: str,
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(features [N, C_l, H_l, W_l], images, total)``: ``layer``'s maps, recorded for a backward to the
    returned leaf copy of ``images``, and the numbers of one image in all tensors of the forward (a bound on
    what one map's backward holds: a DenseNet's concatenations keep every earlier gradient alive). Call within
    ``eval_mode`` and ``torch.enable_grad()``."""
    x = images.detach().requires_grad_(True)
    sites, _ = watch_sites(model, x, [layer], rule=rule)
    maps = sites.features[layer]
    if maps.dim() != 4:
        raise InvalidValueError(f"layer={layer!r} gives {tuple(maps.shape)}, not maps [N, C, H, W]: the deconvnet "
                                "projects a conv layer's maps or a block's (any module whose output is maps)")
    return maps, x, sites.total


def project_graph(model: nn.Module, images: torch.Tensor, layer: str, channels: list[int] | torch.Tensor | None,
                  mode: str, rule: str, max_elements: int) -> torch.Tensor:
    """``images [N, C, H, W]`` -> ``[N, K, C, H, W]``: for each chosen channel its strongest unit (``mode="max"``)
    or its whole map (``"map"``), every other activation of the layer zeroed, sent down to the pixels."""
    with eval_mode(model), torch.enable_grad():
        maps, x, total = recorded_features(model, images, layer, rule)
        chan = _checked_channels(channels, maps, layer)
        kept = maps.detach()[:, chan]  # [N, K, H_l, W_l]
        if mode == "max":
            kept = keep_max(kept)
        n, k = kept.shape[:2]
        out = images.new_zeros((n, k, *images.shape[1:]))
        chunk = max(1, max_elements // max(1, n * total))  # maps going down together, within the budget
        for start in range(0, k, chunk):
            idx = slice(start, min(start + chunk, k))
            seeds = maps.new_zeros((idx.stop - idx.start, *maps.shape))  # one seed per map: [k, N, C_l, H_l, W_l]
            seeds[torch.arange(len(seeds)), :, chan[idx]] = kept[:, idx].transpose(0, 1)
            (grads,) = torch.autograd.grad(maps, x, seeds, retain_graph=idx.stop < k, is_grads_batched=True)
            out[:, idx] = grads.transpose(0, 1)
    return out


def project_units_graph(model: nn.Module, images: torch.Tensor, layer: str, channels: torch.Tensor, mode: str,
                        rule: str) -> torch.Tensor:
    """``[N, C, H, W]``: channel ``channels[i]`` of image ``i``, projected alone (one backward: the units sit in
    different images)."""
    with eval_mode(model), torch.enable_grad():
        maps, x, _ = recorded_features(model, images, layer, rule)
        chan = _checked_channels(channels, maps, layer)
        if chan.numel() != maps.shape[0]:
            raise InvalidValueError(f"project_units needs one channel per image: {maps.shape[0]} images, "
                                    f"{chan.numel()} channels")
        kept = maps.detach()[torch.arange(len(chan), device=chan.device), chan][:, None]  # [N, 1, H_l, W_l]
        if mode == "max":
            kept = keep_max(kept)
        seed = maps.new_zeros(maps.shape)
        seed[torch.arange(len(chan), device=chan.device), chan] = kept[:, 0]
        (grads,) = torch.autograd.grad(maps, x, seed)
    return grads


def _checked_channels(channels: list[int] | torch.Tensor | None, maps: torch.Tensor, layer: str) -> torch.Tensor:
    c_l = maps.shape[1]
    chan = torch.arange(c_l) if channels is None else torch.as_tensor(channels, dtype=torch.long).flatten()
    if chan.numel() and (chan.min() < 0 or chan.max() >= c_l):
        raise InvalidValueError(f"channels must lie in 0..{c_l - 1} for layer {layer!r}; got {chan.tolist()}")
    return chan.to(maps.device)


def keep_max(selected: torch.Tensor) -> torch.Tensor:
    """Zero all but the largest value of each map of ``[N, K, H, W]``."""
    flat = selected.flatten(2)
    keep = torch.zeros_like(flat).scatter_(2, flat.argmax(2, keepdim=True), 1.0)
    return (flat * keep).view_as(selected)
