"""How the recipes see a network's inputs, whichever way they were normalised, and the defaults of the
figures' geometry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from zfexp.data.transforms import displayable


@dataclass(frozen=True)
class Inputs:
    """``shown``: model inputs ``[N, C, H, W]`` back to pixels in [0, 1], for the figures; ``fill``: the paper's
    grey, the dataset mean, per channel ``[C]`` in the inputs' units (what the occluder holds); ``class_names``:
    by label, when known."""

    shown: Callable[[torch.Tensor], torch.Tensor]
    fill: Callable[[torch.Tensor], torch.Tensor]
    class_names: Sequence[str] | None = None

    @classmethod
    def of_datamodule(cls, datamodule) -> Inputs:
        """A datamodule's inputs: its pixel scale and mean image undone for showing; its grey is 0 once the mean
        image is subtracted, else the images' own channel means stand in for the dataset's."""
        preprocess = getattr(datamodule, "preprocess", None)
        mean = getattr(datamodule, "mean", None)
        subtracted = bool(getattr(preprocess, "mean_image", False))

        def shown(images: torch.Tensor) -> torch.Tensor:
            return images if preprocess is None else displayable(images, preprocess, mean)

        def fill(images: torch.Tensor) -> torch.Tensor:
            if subtracted:
                return torch.zeros(images.shape[1], device=images.device)
            return images.mean(dim=(0, 2, 3))

        return cls(shown, fill, getattr(datamodule, "classes", None))

    @classmethod
    def of_normalization(cls, normalization, class_names: Sequence[str] | None = None) -> Inputs:
        """Inputs normalised by a dataset's mean and std (:class:`~zfexp.data.normalization.InputNormalization`,
        torchvision's weights): shown by undoing it; the grey is 0."""
        return cls(normalization.shown, normalization.fill, class_names)


def occlusion_geometry(image_side: int, patch: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """Fig. 7's square: ``patch`` pixels on a side (``None``: a quarter of the image side) moved by ``stride``
    (``None``: a quarter of the patch)."""
    patch = patch or max(1, image_side // 4)
    return patch, stride or max(1, patch // 4)
