"""Invariance curves (Fig. 5): how far the features of layers 1 and 7 move, and how the true-class
probability changes, as an image is translated, scaled or rotated."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from zfexp.analysis.activations import check_feature_layers, layer_outputs
from zfexp.checks import one_of
from zfexp.errors import InvalidValueError

TRANSFORMS = ("translate", "scale", "rotate")


@dataclass
class InvarianceResult:
    """``values [V]`` of ``transform``; ``distance[layer] [N, V]``: Euclidean distance between the layer's
    feature vector on the original and on the transformed image; ``prob_true [N, V]``, ``top_label [N, V]``."""

    transform: str
    values: torch.Tensor
    distance: dict[str, torch.Tensor]
    prob_true: torch.Tensor
    top_label: torch.Tensor

    def table(self) -> list[dict]:
        """One row per value and image: what a CSV file or a W&B table holds."""
        out = []
        for v, value in enumerate(self.values.tolist()):
            for i in range(self.prob_true.shape[0]):
                row = {"transform": self.transform, "value": value, "image": i,
                       "prob_true": float(self.prob_true[i, v]), "top_label": int(self.top_label[i, v])}
                row.update({f"distance_{layer}": float(d[i, v]) for layer, d in self.distance.items()})
                out.append(row)
        return out

    @property
    def unit(self) -> str:
        return {"translate": "pixels (vertical)", "scale": "scale ratio", "rotate": "degrees"}[self.transform]


def default_values(transform: str, image_size: int) -> torch.Tensor:
    """The paper's ranges: -60..60 px at 224 (scaled to the input size), 1..1.8, 0..350 degrees."""
    if transform == "translate":
        return torch.linspace(-60, 60, 13) * image_size / 224
    if transform == "scale":
        return torch.linspace(1.0, 1.8, 9)
    if transform == "rotate":
        return torch.arange(0, 360, 10, dtype=torch.float32)
    raise InvalidValueError(f"transform={transform!r}; valid: {', '.join(TRANSFORMS)}")


def transformed(images: torch.Tensor, transform: str, value: float, fill: float = 0.0) -> torch.Tensor:
    """``images [N, C, H, W]`` moved by ``value`` pixels down (translate), zoomed about the centre by
    ``value`` (scale) or rotated by ``value`` degrees counter-clockwise (rotate); uncovered pixels take
    ``fill`` (0 = the dataset mean for mean-subtracted inputs). Bilinear, torchvision's affine."""
    one_of("transform", transform, TRANSFORMS)
    translate = [0.0, float(value)] if transform == "translate" else [0.0, 0.0]
    scale = float(value) if transform == "scale" else 1.0
    angle = -float(value) if transform == "rotate" else 0.0  # affine turns clockwise; we follow rotate()
    if scale <= 0:
        raise InvalidValueError(f"scale value {value} must be positive")
    if translate == [0.0, 0.0] and scale == 1.0 and angle % 360 == 0:
        return images.clone()  # the identity, exactly (resampling would add rounding noise)
    return TF.affine(images, angle=angle, translate=translate, scale=scale, shear=[0.0, 0.0],
                     interpolation=InterpolationMode.BILINEAR, fill=fill)


@torch.no_grad()
def invariance_curves(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                      transform: str, values: torch.Tensor | Sequence[float] | None = None,
                      layers: Sequence[str] = ("conv1", "fc7"), fill: float = 0.0,
                      probabilities: Callable[[torch.Tensor], torch.Tensor] | None = None) -> InvarianceResult:
    """Fig. 5 for ``images [N, C, H, W]`` with true ``labels [N]``: one forward pass per value (all images
    at once); ``values`` default to the paper's range for ``transform``."""
    one_of("transform", transform, TRANSFORMS)
    check_feature_layers(model, layers)
    n = images.shape[0]
    labels = torch.as_tensor(labels, dtype=torch.long, device=images.device).flatten()
    if labels.numel() != n:
        raise InvalidValueError(f"invariance_curves: {n} images but {labels.numel()} labels")
    values = default_values(transform, images.shape[-1]) if values is None else torch.as_tensor(values).float()
    probabilities = probabilities or (lambda logits: logits.softmax(-1))
    _, reference = layer_outputs(model, images, layers)
    distance: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}  # per layer, [N] per value
    prob_true, top_label = [], []
    for value in values.tolist():
        logits, feats = layer_outputs(model, transformed(images, transform, value, fill), layers)
        probs = probabilities(logits)
        prob_true.append(probs[torch.arange(n), labels])
        top_label.append(probs.argmax(1))
        for layer in layers:
            distance[layer].append((feats[layer] - reference[layer]).norm(dim=1))
    return InvarianceResult(transform=transform, values=values,
                            distance={layer: torch.stack(d, 1).cpu() for layer, d in distance.items()},
                            prob_true=torch.stack(prob_true, 1).cpu(), top_label=torch.stack(top_label, 1).cpu())
