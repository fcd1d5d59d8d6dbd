"""Arbitrary photographs as model inputs: every image file of a folder, resized and normalised the way a
datamodule prepares its own images, so a trained model can be analysed on pictures it has never seen."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from zfexp.data.imagenet import load_rgb
from zfexp.data.transforms import Preprocessing, ScalePixels, SubtractMeanImage
from zfexp.errors import DatasetNotFoundError, InvalidValueError


def photo_transform(preprocess: Preprocessing, mean: torch.Tensor | None, in_channels: int) -> v2.Compose:
    """PIL image of any size -> ``[in_channels, input_size, input_size]``: grey if the model is, the smaller
    side resized to the datamodule's resize (or the input size), centre crops, mean image, pixel scale."""
    size = preprocess.input_size
    steps: list[nn.Module] = [v2.Grayscale(1)] if in_channels == 1 else []
    steps += [v2.ToImage(), v2.Resize(preprocess.resize or size, antialias=True),
              v2.CenterCrop(preprocess.crop or size), v2.ToDtype(torch.float32, scale=True)]
    if preprocess.mean_image:
        if mean is None:
            raise InvalidValueError("data.preprocess.mean_image=true but the datamodule has no mean image (call setup "
                                    "first)")
        steps.append(SubtractMeanImage(mean))
    steps += [ScalePixels(preprocess.pixel_scale), v2.CenterCrop(size)]
    return v2.Compose(steps)


class ImageFiles(Dataset):
    """Every image file directly under ``root`` (sorted by name) as ``(transform(image), -1)``: no labels."""

    def __init__(self, root: str | Path, transform=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"images={self.root}: not a folder; give a folder of image files "
                                       f"({', '.join(IMG_EXTENSIONS)}) or images=test")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        if not self.files:
            raise DatasetNotFoundError(f"images={self.root}: no image files ({', '.join(IMG_EXTENSIONS)}) in it")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = load_rgb(str(self.files[index]))
        return (self.transform(image) if self.transform else image), -1
