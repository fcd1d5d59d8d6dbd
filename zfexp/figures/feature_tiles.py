"""The paper's feature pictures as image tensors ``[3, H, W]`` in [0, 1]: the Fig. 2 sheet and table from the
top-k projections beside their patches (computed by :mod:`zfexp.analysis.unit_crops`) and the Fig. 6 filter
grid. Used by the recipes, so by the callbacks and by ``zfexp.analyze``."""

from __future__ import annotations

import math

import torch

from zfexp.analysis.top_k import TopActivationsResult
from zfexp.figures.grid import image_grid, side_by_side


def unit_grid(tiles: torch.Tensor, normalise: str) -> torch.Tensor:
    """``[k, C, s, s]`` tiles in a square block, ``ceil(sqrt(k))`` on a side (Fig. 2's 3x3), each normalised on
    its own (``normalise``: ``image_grid``'s): an image ``[3, H, W]``."""
    side = math.ceil(math.sqrt(tiles.shape[0]))
    return image_grid(_block(tiles, side), normalise=normalise)


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
    ``patch`` (:func:`~zfexp.analysis.unit_crops.top_k_tiles`' pieces): a W&B table to sort and filter."""
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
