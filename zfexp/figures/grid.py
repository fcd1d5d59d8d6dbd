"""One grid renderer for the paper's figures: tiles ``[rows, cols, C, h, w]`` -> an image ``[C, H, W]``.

Per-tile contrast normalisation as in the paper's figures: a deconv projection or a filter is scaled by its
own largest magnitude so that zero is mid-grey (``"symmetric"``); image patches are stretched to their own
min..max (``"minmax"``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from zfexp.checks import one_of
from zfexp.errors import InvalidValueError

NORMALISE = ("symmetric", "minmax", "none")


def normalise_tiles(tiles: torch.Tensor, mode: str = "symmetric") -> torch.Tensor:
    """Scale each tile of ``[..., C, h, w]`` into [0, 1] on its own."""
    one_of("normalise", mode, NORMALISE)
    t = tiles.detach().float()
    if mode == "none":
        return t.clamp(0, 1)
    flat = t.flatten(-3)
    if mode == "symmetric":
        scale = flat.abs().amax(-1).clamp_min(1e-12)[..., None, None, None]
        return (t / (2 * scale) + 0.5).clamp(0, 1)
    lo = flat.amin(-1)[..., None, None, None]
    hi = flat.amax(-1)[..., None, None, None]
    return ((t - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def image_grid(tiles: torch.Tensor, normalise: str = "symmetric", pad: int = 1, pad_value: float = 1.0,
               min_tile: int = 32) -> torch.Tensor:
    """``tiles [rows, cols, C, h, w]`` -> ``[3, rows * (h' + pad) + pad, cols * (w' + pad) + pad]`` in [0, 1].

    Tiles smaller than ``min_tile`` are enlarged by a whole factor (nearest), so a 5x5 conv1 field is visible.
    """
    if tiles.dim() != 5:
        raise InvalidValueError(f"tiles must be [rows, cols, C, h, w]; got shape {tuple(tiles.shape)}")
    t = normalise_tiles(tiles, normalise)
    scale = max(1, -(-min_tile // max(tiles.shape[-2:])))
    if scale > 1:
        t = t.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    rows, cols, c, h, w = t.shape
    if c == 1:
        t = t.expand(-1, -1, 3, -1, -1)
    grid = torch.full((3, rows * (h + pad) + pad, cols * (w + pad) + pad), pad_value)
    for r in range(rows):
        for q in range(cols):
            top, left = pad + r * (h + pad), pad + q * (w + pad)
            grid[:, top:top + h, left:left + w] = t[r, q]
    return grid


def side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """Two rendered images ``[C, H, W]`` next to each other (heights padded to match), white gap between."""
    h = max(left.shape[1], right.shape[1])
    pad = lambda img: F.pad(img, (0, 0, 0, h - img.shape[1]), value=1.0)  # noqa: E731
    return torch.cat([pad(left), torch.ones(left.shape[0], h, gap), pad(right)], dim=2)
