"""The paper's preprocessing (Sec. 3) as composable torchvision ``transforms.v2`` pipelines.

ImageNet in the paper: resize the smaller side to 256, centre-crop 256x256, subtract the per-pixel
mean image, then take 224x224 sub-crops (random crops and horizontal flips for training; centre, or
4 corners + centre with and without flip = 10 crops for evaluation). ``pixel_scale`` multiplies the
mean-subtracted [0, 1] pixels, so ``pixel_scale=255`` gives the paper's roughly [-128, 128] range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2

from zfexp.checks import positive_int
from zfexp.errors import InvalidValueError


@dataclass(frozen=True)
class Preprocessing:
    """Options of the paper's pipeline; every datamodule takes these as its ``preprocess`` config."""

    resize: int | None = 256  # smaller side resized to this; None keeps the native size
    crop: int | None = 256  # centre crop after the resize; None skips it
    input_size: int = 224  # size of the crops the network sees
    mean_image: bool = True  # subtract the per-pixel mean image of the training set
    hflip: bool = True  # random horizontal flips for training
    ten_crop: bool = False  # evaluate on 10 crops and average the softmax
    pixel_scale: float = 255.0  # the paper's [-128, 128] input range; 1.0: [-0.5, 0.5]

    def __post_init__(self) -> None:
        for key in ("resize", "crop"):
            value = getattr(self, key)
            positive_int(f"data.preprocess.{key}", value, null="skipped", unit="pixels")
        positive_int("data.preprocess.input_size", self.input_size, unit="pixels")
        if self.resize is not None and self.crop is not None and self.crop > self.resize:
            raise InvalidValueError(
                f"data.preprocess.crop={self.crop} is larger than data.preprocess.resize={self.resize}: the centre "
                f"crop is cut from the image resized to {self.resize} px (smaller side); valid: 1..{self.resize}, or "
                "raise resize (the paper: resize 256, crop 256)")
        outer = self.crop if self.crop is not None else self.resize
        if outer is not None and self.input_size > outer:
            key = "crop" if self.crop is not None else "resize"
            raise InvalidValueError(
                f"data.preprocess.input_size={self.input_size} is larger than data.preprocess.{key}={outer}: the "
                f"network's crops are cut from that image; valid: 1..{outer} (the paper: 224 of 256)")
        if not self.pixel_scale > 0:
            raise InvalidValueError(f"data.preprocess.pixel_scale={self.pixel_scale}: must be positive (255: the "
                                    "paper's [-128, 128] range)")

    def check_native_size(self, side: int) -> None:
        """For a dataset whose images all have ``side`` x ``side`` pixels: nothing may be cut larger than them
        (a larger crop would pad the images with zeros)."""
        if self.resize is not None:
            return
        key = "crop" if self.crop is not None else "input_size"  # input_size <= crop is checked already
        value = getattr(self, key)
        if value > side:
            raise InvalidValueError(
                f"data.preprocess.{key}={value} is larger than the images ({side} x {side} px) with "
                f"data.preprocess.resize=null; valid: 1..{side}, or set data.preprocess.resize")


class SubtractMeanImage(nn.Module):
    """``x - mean`` for an image ``[C, H, W]`` (or a batch) and a mean image ``[C, H, W]`` of the same size."""

    mean: torch.Tensor  # a buffer, registered in __init__; typed here (nn.Module's __getattr__ says Tensor | Module)

    def __init__(self, mean: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-3:] != self.mean.shape:
            raise InvalidValueError(f"image of shape {tuple(image.shape[-3:])} does not match the mean image "
                                    f"{tuple(self.mean.shape)}: data.preprocess.resize, crop and input_size give other "
                                    "images than the mean was computed on (a checkpoint's: the ones it was trained "
                                    "with; leave data= out to use them)")
        return image - self.mean


class ScalePixels(nn.Module):
    """Multiply by a constant: the paper's input range is pixels in [0, 255] minus the mean."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * self.scale if self.scale != 1.0 else image


class StackCrops(nn.Module):
    """Turn the tuple of crops from ``TenCrop`` into one tensor ``[10, C, H, W]``."""

    def forward(self, crops: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.stack(list(crops))


def pixels_transform(p: Preprocessing) -> v2.Compose:
    """PIL image or uint8 tensor -> uint8 tensor ``[C, crop, crop]``: what must happen to each image at its own
    size (the smaller side resized, the centre crop). The rest is the same for every image and runs batched:
    :class:`zfexp.data.batch_preprocessing.BatchPreprocessing`.

    The image becomes a tensor before the resize: PyTorch's antialiased bilinear kernel for uint8 tensors is
    about 4x faster than PIL's resize (1.2 vs 0.3 ms for a 500x375 photo to 256 px on one core)."""
    steps: list[nn.Module] = [v2.ToImage()]
    if p.resize is not None:
        steps.append(v2.Resize(p.resize, antialias=True))
    if p.crop is not None:
        steps.append(v2.CenterCrop(p.crop))
    return v2.Compose(steps)


def base_transform(p: Preprocessing) -> v2.Compose:
    """PIL image or uint8 tensor -> float tensor ``[C, crop, crop]`` in [0, 1]."""
    return v2.Compose([pixels_transform(p), v2.ToDtype(torch.float32, scale=True)])


def draw_crop_flip(height: int, width: int, size: int, hflip: bool) -> torch.Tensor:
    """One training crop of an ``height`` x ``width`` image: ``(top, left, flip)`` as an int64 tensor ``[3]``.

    Drawn from torch's CPU generator with the rule and in the order of torchvision's ``RandomCrop(size)`` then
    ``RandomHorizontalFlip()`` (no draw along a side the crop fills, a flip when ``rand < 0.5``), so an image
    seeded alike gets the same crop and flip from :func:`paper_transform` as from the batched path.
    """
    top = int(torch.randint(0, height - size + 1, size=())) if height > size else 0
    left = int(torch.randint(0, width - size + 1, size=())) if width > size else 0
    flip = hflip and bool(torch.rand(1) < 0.5)
    return torch.tensor([top, left, int(flip)])


def paper_transform(p: Preprocessing, mean: torch.Tensor | None, train: bool) -> v2.Compose:
    """The full pipeline: ``[C, input_size, input_size]``, or ``[10, C, input_size, input_size]`` with 10-crop eval."""
    steps: list[nn.Module] = [base_transform(p)]
    if p.mean_image:
        if mean is None:
            raise InvalidValueError("data.preprocess.mean_image=true but no mean image was computed (call prepare_data "
                                    "first)")
        steps.append(SubtractMeanImage(mean))
    steps.append(ScalePixels(p.pixel_scale))
    if train:
        steps.append(v2.RandomCrop(p.input_size))
        if p.hflip:
            steps.append(v2.RandomHorizontalFlip())
    elif p.ten_crop:
        steps += [v2.TenCrop(p.input_size), StackCrops()]
    else:
        steps.append(v2.CenterCrop(p.input_size))
    return v2.Compose(steps)


def displayable(images: torch.Tensor, preprocess: Preprocessing, mean: torch.Tensor | None) -> torch.Tensor:
    """Undo the pixel scale and the mean image on model inputs ``[N, C, H, W]``, for showing them."""
    from torchvision.transforms.v2 import functional as TF

    shown = images / preprocess.pixel_scale
    if preprocess.mean_image and mean is not None:
        shown = shown + TF.center_crop(mean.to(images.device), list(images.shape[-2:]))
    return shown
