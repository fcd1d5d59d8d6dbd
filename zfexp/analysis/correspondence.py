"""Correspondence (Table 1, Fig. 8): does occluding the same object part in different images change the
features in a consistent way?

For images ``i`` and a part, ``eps_i^l = x_i^l - x~_i^l`` (features of layer ``l`` of the original minus those
of the copy with the part occluded). ``Delta_l`` is the Hamming distance between ``sign(eps_i^l)`` and
``sign(eps_j^l)``, normalised by the vector length, over all pairs ``i != j``: we report its mean and
standard deviation over the pairs. Lower means the part is encoded more consistently; occluding random
boxes of the same sizes is the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zfexp.analysis.activations import check_feature_layers, layer_outputs
from zfexp.checks import is_int
from zfexp.errors import InvalidValueError

Box = tuple[int, int, int, int]  # (top, left, bottom, right), inclusive, as receptive_field returns


@dataclass
class CorrespondenceResult:
    """``delta[occlusion][layer] = (mean, std)`` over image pairs; ``occlusion`` is a part name or
    ``"random"``. ``pairs[occlusion][layer] [P]``: the normalised Hamming distance of every pair."""

    delta: dict[str, dict[str, tuple[float, float]]]
    pairs: dict[str, dict[str, torch.Tensor]]

    def table(self) -> list[dict]:
        """One row per (occlusion, layer): what a CSV file or a W&B table holds."""
        return [{"occlusion": occ, "layer": layer, "delta_mean": m, "delta_std": s}
                for occ, by_layer in self.delta.items() for layer, (m, s) in by_layer.items()]


def occlude_boxes(images: torch.Tensor, boxes: Sequence[Box], fill: float = 0.0) -> torch.Tensor:
    """Copies of ``images [N, C, H, W]`` with ``boxes[i]`` of image ``i`` set to ``fill``."""
    out = images.clone()
    for i, (top, left, bottom, right) in enumerate(boxes):
        out[i, :, top:bottom + 1, left:right + 1] = fill
    return out


def pairwise_sign_hamming(eps: torch.Tensor) -> torch.Tensor:
    """``eps [N, D]`` -> ``[N (N - 1) / 2]``: for each pair ``i < j`` the fraction of entries whose signs
    differ (a zero differs from either sign)."""
    signs = torch.sign(eps)
    i, j = torch.triu_indices(len(eps), len(eps), offset=1)
    return (signs[i] != signs[j]).float().mean(1)


def _check_boxes(name: str, boxes: Sequence[Box], n: int, height: int, width: int) -> None:
    if len(boxes) != n:
        raise InvalidValueError(f"correspondence: part {name!r} has {len(boxes)} boxes for {n} images; give one per "
                                "image")
    for box in boxes:
        if len(box) != 4 or not all(is_int(v) for v in box):
            raise InvalidValueError(f"correspondence: part {name!r} box {tuple(box)}: a box is 4 pixel indices (top, "
                                    "left, bottom, right), integers, inclusive; for fractions of the image side, use "
                                    "python -m zfexp.analyze with correspondence.parts")
        top, left, bottom, right = box
        if not (0 <= top <= bottom < height and 0 <= left <= right < width):
            raise InvalidValueError(f"correspondence: part {name!r} box {tuple(box)} is not inside the "
                                    f"{height}x{width} image; boxes are (top, left, bottom, right), inclusive")


@torch.no_grad()
def correspondence(model: nn.Module, images: torch.Tensor, parts: Mapping[str, Sequence[Box]],
                   layers: Sequence[str] = ("conv5", "fc7"), n_random: int = 10, fill: float = 0.0,
                   seed: int = 0) -> CorrespondenceResult:
    """Table 1 for ``images [N, C, H, W]`` (N >= 2, the same kind of object, e.g. frontal dog faces).

    Args:
        parts: part name -> one box per image, ``(top, left, bottom, right)`` inclusive.
        n_random: trials of random boxes (per part, the same sizes at random places), pooled as ``"random"``.
        fill: the occluder's value (0 = the dataset mean for mean-subtracted inputs).
    """
    n, _, height, width = images.shape
    if n < 2:
        raise InvalidValueError(f"correspondence needs at least 2 images; got {n}")
    if not parts:
        raise InvalidValueError("correspondence: parts is empty; give {part name: one box per image}")
    if n_random < 0:
        raise InvalidValueError(f"correspondence: n_random={n_random} must be >= 0")
    for name, boxes in parts.items():
        _check_boxes(name, boxes, n, height, width)
    check_feature_layers(model, layers)
    _, reference = layer_outputs(model, images, layers)

    def distances(boxes: Sequence[Box]) -> dict[str, torch.Tensor]:
        _, occluded = layer_outputs(model, occlude_boxes(images, boxes, fill), layers)
        return {layer: pairwise_sign_hamming(reference[layer] - occluded[layer]).cpu() for layer in layers}

    pairs = {name: distances(boxes) for name, boxes in parts.items()}
    if n_random:
        g = torch.Generator().manual_seed(seed)
        trials = []
        for _ in range(n_random):
            for boxes in parts.values():
                moved = []
                for top, left, bottom, right in boxes:
                    h, w = bottom - top + 1, right - left + 1
                    t = int(torch.randint(0, height - h + 1, (1,), generator=g))
                    c = int(torch.randint(0, width - w + 1, (1,), generator=g))
                    moved.append((t, c, t + h - 1, c + w - 1))
                trials.append(distances(moved))
        pairs["random"] = {layer: torch.cat([t[layer] for t in trials]) for layer in layers}
    delta = {occ: {layer: (float(d.mean()), float(d.std()) if d.numel() > 1 else 0.0) for layer, d in by.items()}
             for occ, by in pairs.items()}
    return CorrespondenceResult(delta=delta, pairs=pairs)
