"""The paper's feature pictures as image tensors ``[3, H, W]`` in [0, 1], from a model and images: the Fig. 4
tiles (a map's strongest unit, projected and cropped), the Fig. 2 sheet (top-k projections beside their
patches) and the Fig. 6 filter grid. Used by the callbacks and by ``zfexp.analyze``."""

from __future__ import annotations

import math

import torch
from torch import nn

from zfexp.analysis.activations import layer_activations
from zfexp.analysis.deconv import DeconvNet
from zfexp.analysis.geometry import receptive_field, receptive_field_size
from zfexp.analysis.top_k import TopActivationsResult
from zfexp.figures.grid import crop_tiles, image_grid, side_by_side


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


def top_k_sheet(projections: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Fig. 2 from :func:`top_k_tiles`' ``[K, k, C, s, s]`` pieces: one block per map, ``ceil(sqrt(k))`` on a
    side; the projections on the left, the image patches they come from on the right."""
    side = math.ceil(math.sqrt(projections.shape[1]))
    left = image_grid(torch.cat([_block(p, side) for p in projections]), normalise="symmetric")
    right = image_grid(torch.cat([_block(p, side) for p in patches]), normalise="minmax")
    return side_by_side(left, right)


def top_k_table(layer: str, top: TopActivationsResult, projections: torch.Tensor,
                patches: torch.Tensor) -> tuple[list[dict], dict[str, list[torch.Tensor]]]:
    """Fig. 2 as table rows, one per map and rank (``layer, map, rank, activation, image, row, col``: the
    dataset index of the image and where in the map its maximum is), with image columns ``projection`` and
    ``patch`` (:func:`top_k_tiles`' pieces): a W&B table to sort and filter."""
    rows = [{"layer": layer, "map": int(channel), "rank": r + 1, "activation": float(top.values[j, r]),
             "image": int(top.indices[j, r]), "row": int(top.positions[j, r, 0]), "col": int(top.positions[j, r, 1])}
            for j, channel in enumerate(top.channels.tolist()) for r in range(top.values.shape[1])]
    return rows, {"projection": tile_images(projections.flatten(0, 1), "symmetric"),
                  "patch": tile_images(patches.flatten(0, 1), "minmax")}


def tile_images(tiles: torch.Tensor, normalise: str) -> list[torch.Tensor]:
    """``[M, C, s, s]`` tiles -> ``M`` images ``[3, s', s']`` in [0, 1], each normalised on its own as in the
    figures (``normalise``: ``image_grid``'s), enlarged as there: the cells of a W&B table."""
    return [image_grid(tile[None, None], normalise=normalise, pad=0) for tile in tiles]


def _block(tiles: torch.Tensor, side: int) -> torch.Tensor:
    """``[k, C, s, s]`` -> ``[side, side, C, s, s]``, empty slots filled with zeros."""
    k, c, s, _ = tiles.shape
    full = tiles.new_zeros((side * side, c, s, s))
    full[:k] = tiles
    return full.view(side, side, c, s, s)


def filter_grid(weight: torch.Tensor) -> torch.Tensor:
    """Fig. 6: conv filters ``[O, C, kh, kw]`` in a near-square grid, each contrast-normalised."""
    weight = weight.detach().cpu()
    cols = math.ceil(math.sqrt(weight.shape[0]))
    rows = -(-weight.shape[0] // cols)
    tiles = torch.zeros(rows * cols, *weight.shape[1:])
    tiles[: weight.shape[0]] = weight
    return image_grid(tiles.view(rows, cols, *weight.shape[1:]), normalise="symmetric", pad=1)
