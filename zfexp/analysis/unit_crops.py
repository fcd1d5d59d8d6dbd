"""The units Figs. 2 and 4 show, projected to pixels and cropped to their receptive fields: each chosen map's
strongest unit over a batch (Fig. 4), and the top-k units of each map over a dataset beside the image patches
they see (Fig. 2). Tensors in, tensors out; ``zfexp.figures.feature_tiles`` lays them out."""

from __future__ import annotations

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


def top_k_tiles(net: nn.Module, dataset, layer: str, top: TopActivationsResult,
                device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fig. 2's pieces: ``(projections, patches, predicted)``; the first two ``[K, k, C, s, s]``: per chosen map
    and rank, the unit's deconv projection and the image patch it sees, cropped to its receptive field;
    ``predicted [K, k]``: the network's most probable class for each image. ``dataset[i]`` is
    ``(image [C, H, W], label)``."""
    projections, patches, predicted = [], [], []
    deconv = DeconvNet(net)
    for j, channel in enumerate(top.channels.tolist()):
        images = torch.stack([dataset[int(i)][0] for i in top.indices[j]])
        with torch.no_grad():
            predicted.append(net(images.to(device)).argmax(1).cpu())
        proj = deconv.project_units(images.to(device), layer, [channel] * len(images)).cpu()
        boxes = [receptive_field(net, layer, tuple(p), _image_size(images)) for p in top.positions[j].tolist()]
        size = tile_size(net, layer, images)
        projections.append(crop_tiles(proj, boxes, size))
        patches.append(crop_tiles(images, boxes, size))
    return torch.stack(projections), torch.stack(patches), torch.stack(predicted)
