"""The units Figs. 2 and 4 show, projected to pixels and cropped to their receptive fields: each chosen map's
strongest unit over a batch (Fig. 4), and the top-k units of each map over a dataset beside the image patches
they see (Fig. 2). Tensors in, tensors out; ``zfexp.figures.feature_tiles`` lays them out."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from zfexp.analysis.activations import layer_activations
from zfexp.analysis.deconv import DeconvNet
from zfexp.analysis.geometry import receptive_field, receptive_field_size
from zfexp.analysis.top_k import TopActivationsResult

Box = tuple[int, int, int, int]  # inclusive (top, left, bottom, right) in pixels


def resize_tiles(tiles: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[..., C, h, w]`` tiles to ``size x size`` (nearest: keeps the pixels of small inputs visible)."""
    lead = tiles.shape[:-3]
    flat = tiles.reshape(-1, *tiles.shape[-3:]).float()
    return F.interpolate(flat, size=(size, size), mode="nearest").view(*lead, tiles.shape[-3], size, size)


def crop_tiles(images: torch.Tensor, boxes: list[Box], size: int | None = None) -> torch.Tensor:
    """Crop ``images [N, C, H, W]`` to their inclusive ``(top, left, bottom, right)`` boxes and resize every
    crop to ``size`` (default: the largest box side): ``[N, C, size, size]``."""
    if size is None:
        size = max(max(bottom - top, right - left) + 1 for top, left, bottom, right in boxes)
    crops = [resize_tiles(img[:, top:bottom + 1, left:right + 1][None], size)[0]
             for img, (top, left, bottom, right) in zip(images, boxes, strict=True)]
    return torch.stack(crops)


def _image_size(images: torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of ``images [..., H, W]``."""
    return images.shape[-2], images.shape[-1]


def tile_size(net: nn.Module, layer: str, images: torch.Tensor) -> int:
    """Every crop of a layer is drawn at the size of its units' receptive field (at most the image)."""
    return min(receptive_field_size(net, layer, _image_size(images)), max(images.shape[-2:]))


def strongest_unit_tiles(net: nn.Module, images: torch.Tensor, layer: str, maps: list[int],
                         rule: str = "deconvnet") -> torch.Tensor:
    """``[K, C, s, s]``: per chosen map, its strongest unit over ``images [N, C, H, W]``, projected to pixels
    and cropped to the unit's receptive field (Fig. 4's tiles). ``rule``: how the projection inverts the ReLUs
    (``DeconvNet``'s rules); the unit chosen does not depend on it."""
    acts = layer_activations(net, images, [layer])[layer][:, maps]  # [N, K, H_l, W_l]
    width = acts.shape[-1]
    per_image, where = acts.flatten(2).max(2)  # [N, K]
    best = per_image.argmax(0)  # [K] image of each map's strongest activation
    proj = DeconvNet(net, rule=rule).project_units(images[best], layer, maps)  # [K, C, H, W]
    boxes = []
    for j, b in enumerate(best.tolist()):
        row, col = divmod(int(where[b, j]), width)
        boxes.append(receptive_field(net, layer, (row, col), _image_size(images)))
    return crop_tiles(proj.cpu(), boxes, tile_size(net, layer, images))


def units_per_batch(image_shape: Sequence[int], device: torch.device | str = "cpu") -> int:
    """How many units to project at once, at least one and at most 256: 4 MiB of float32 images on a CPU (28 px:
    256; 224 px RGB: 6; larger batches cost more per unit there, 46 ms a unit of ZFNet's conv5 in 27 vs 39-41 in
    3-13), 16 MiB on a GPU (224 px RGB: 27)."""
    budget = 1 << 22 if torch.device(device).type == "cuda" else 1 << 20
    return max(1, min(256, budget // math.prod(image_shape)))


def top_k_tiles(net: nn.Module, dataset, layer: str, top: TopActivationsResult, device: torch.device | str,
                shown: Callable[[torch.Tensor], torch.Tensor] | None = None, batch: int | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fig. 2's pieces: ``(projections, patches, predicted)``; the first two ``[K, k, C, s, s]``: per chosen map
    and rank, the unit's deconv projection and the image patch it sees (``shown(images)`` when given: the
    pixels as a person sees them), cropped to its receptive field; ``predicted [K, k]``: the network's most
    probable class for each image. ``dataset[i]`` is ``(image [C, H, W], label)``.

    The ``K * k`` units go down the deconvnet ``batch`` at a time (default :func:`units_per_batch`), whatever
    map they belong to, each with its own image and channel."""
    maps, k = top.indices.shape
    indices = top.indices.flatten().tolist()  # [K * k], map-major
    channels = top.channels.repeat_interleave(k)  # [K * k]
    positions = top.positions.flatten(0, 1).tolist()  # [K * k] of (row, col)
    first = dataset[indices[0]][0]
    image_size, size = _image_size(first), tile_size(net, layer, first[None])
    batch = batch or units_per_batch(first.shape, device)
    deconv = DeconvNet(net)
    classes: dict[int, int] = {}  # each image's predicted class, found once however many units it has
    projections, patches = [], []
    for start in range(0, len(indices), batch):
        chunk = slice(start, start + batch)
        loaded = {i: dataset[i][0] for i in set(indices[chunk])}  # an image read once per batch of units
        new = [i for i in loaded if i not in classes]
        if new:
            with torch.no_grad():
                found = net(torch.stack([loaded[i] for i in new]).to(device)).argmax(1).tolist()
            classes.update(zip(new, found, strict=True))
        images = torch.stack([loaded[i] for i in indices[chunk]]).to(device)  # [B, C, H, W]
        proj = deconv.project_units(images, layer, channels[chunk].to(images.device)).cpu()
        boxes = [receptive_field(net, layer, (row, col), image_size) for row, col in positions[chunk]]
        projections.append(crop_tiles(proj, boxes, size))
        patches.append(crop_tiles((shown(images) if shown is not None else images).cpu(), boxes, size))
    predicted = torch.tensor([classes[i] for i in indices]).view(maps, k)
    return (torch.cat(projections).unflatten(0, (maps, k)), torch.cat(patches).unflatten(0, (maps, k)),
            predicted)
