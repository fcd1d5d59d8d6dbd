"""How a network that is not ours expects its images (``zfexp.analyze network=...``, the ``input`` config
group): the smaller side resized, a centre crop, then ``(x - mean) / std`` per channel, as torchvision's
ImageNet weights were trained; and back, for showing the images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from zfexp.checks import one_of, positive_int
from zfexp.errors import InvalidValueError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class InputNormalization:
    """``resize``: the smaller side, in pixels; ``crop``: the centre crop the network sees; ``mean``, ``std``:
    per channel, of pixels in [0, 1] (their count is the network's input channels); ``interpolation`` of the
    resize (torchvision's ``InterpolationMode`` values). The defaults are torchvision's ImageNet weights'."""

    resize: int = 256
    crop: int = 224
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    @classmethod
    def from_config(cls, values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
                    ) -> InputNormalization:
        """The ``input`` config, its null values taken from ``defaults`` (named weights' own preprocessing),
        else from torchvision's ImageNet weights'."""
        return cls(**{**(defaults or {}), **{k: v for k, v in values.items() if v is not None}})

    def __post_init__(self) -> None:
        for key in ("mean", "std"):  # one kind of sequence whatever the config gave: equal settings compare equal
            object.__setattr__(self, key, tuple(float(v) for v in getattr(self, key)))
        for key in ("resize", "crop"):
            positive_int(f"input.{key}", getattr(self, key), unit="pixels")
        if self.crop > self.resize:
            raise InvalidValueError(f"input.crop={self.crop} is larger than input.resize={self.resize}; valid: "
                                    f"1..{self.resize}")
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise InvalidValueError(f"input.mean={list(self.mean)}, input.std={list(self.std)}: one value per "
                                    "channel (1 or 3), as many of each")
        if not all(s > 0 for s in self.std):
            raise InvalidValueError(f"input.std={list(self.std)}: must be positive")
        one_of("input.interpolation", self.interpolation, INTERPOLATIONS)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def transform(self) -> v2.Compose:
        """PIL image of any size -> ``[channels, crop, crop]`` float, normalised."""
        steps = [v2.Grayscale(1)] if self.channels == 1 else []
        resize = v2.Resize(self.resize, interpolation=v2.InterpolationMode(self.interpolation), antialias=True)
        return v2.Compose([*steps, v2.ToImage(), resize, v2.CenterCrop(self.crop),
                           v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(list(self.mean), list(self.std))])

    def shown(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised ``[N, C, H, W]`` -> pixels in [0, 1] again."""
        mean = torch.tensor(list(self.mean), device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(list(self.std), device=images.device).view(1, -1, 1, 1)
        return images * std + mean

    def fill(self, images: torch.Tensor) -> torch.Tensor:
        """The paper's grey square, the dataset mean: 0 after normalising by it."""
        return torch.zeros(images.shape[1], device=images.device)
