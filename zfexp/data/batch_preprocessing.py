"""The paper's preprocessing after the centre crop, on whole uint8 batches on the training device.

Loader workers decode each image and cut it to the common size (:func:`~zfexp.data.transforms.pixels_transform`),
and a training image also gets its crop and flip drawn there, from its own seed
(:func:`~zfexp.data.transforms.draw_crop_flip`). One byte per pixel crosses host memory and the bus; the float
work (the mean image, ``pixel_scale``, the 224 crops, flips and the 10 crops of evaluation) runs here, a few
batched kernels on the device instead of per image in Python. The numbers are those of
:func:`~zfexp.data.transforms.paper_transform` for the same draws: the same operations in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from zfexp.data.transforms import Preprocessing, draw_crop_flip
from zfexp.errors import InvalidValueError


class WithCrops(Dataset):
    """A training set of uint8 images ``(image [C, S, S], label)`` -> ``(image, label, crop [3])``: each image's
    random crop and flip drawn in the worker, from the generator :class:`~zfexp.data.sampling.SeededItems`
    seeded for that image, and applied later to the whole batch."""

    def __init__(self, dataset: Dataset, preprocess: Preprocessing):
        self.dataset, self.preprocess = dataset, preprocess

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any, torch.Tensor]:
        image, label = self.dataset[index]
        height, width = image.shape[-2:]
        return image, label, draw_crop_flip(height, width, self.preprocess.input_size, self.preprocess.hflip)


def crop_flip(images: torch.Tensor, crops: torch.Tensor, size: int, method: str | None = None) -> torch.Tensor:
    """A ``size`` x ``size`` crop of each image, mirrored left-right where asked.

    Args:
        images: ``[B, C, H, W]`` of any dtype (a view expanded over the batch works too).
        crops: ``[B, 3]`` integers ``(top, left, flip)`` per image.
        method: ``"gather"``: two gathers (rows, then columns), two kernels for the batch, the GPU's way;
            ``"slices"``: a slice per image, strided copies, several times faster on a CPU than a gather (which
            computes an index per element); ``None``: by the device. The same numbers either way.
    Returns:
        ``[B, C, size, size]`` (only the flips when the crop is the whole image).
    """
    b, c, h, w = images.shape
    if (h, w) == (size, size):
        flip = crops[:, 2].to(images.device).bool()[:, None, None, None]
        return torch.where(flip, images.flip(-1), images)
    if (method or ("slices" if images.device.type == "cpu" else "gather")) == "slices":
        windows = [images[i, :, top: top + size, left: left + size] for i, (top, left, _) in enumerate(crops.tolist())]
        return torch.stack([win.flip(-1) if flip else win for win, flip in zip(windows, crops[:, 2].tolist(),
                                                                               strict=True)])
    top, left, flip = crops.to(images.device).unbind(1)
    steps = torch.arange(size, device=images.device)
    rows = (top[:, None] + steps)[:, None, :, None].expand(b, c, size, w)
    # Mirroring after cropping is reading the crop's columns right to left.
    cols = left[:, None, None, None] + torch.where(flip.bool()[:, None, None, None], size - 1 - steps, steps)
    return images.gather(2, rows).gather(3, cols.expand(b, c, size, size))


class BatchPreprocessing(nn.Module):
    """uint8 batches of centre-cropped images -> the network's float inputs.

    Training: ``(images [B, C, S, S] uint8, labels [B], crops [B, 3])`` -> ``(inputs [B, C, s, s], labels)``.
    Evaluation: ``(images [B, C, S, S] uint8, labels [B])`` -> ``(inputs [B, C, s, s], labels)``, or with
    ``ten_crop`` ``(inputs [B, 10, C, s, s], labels)``; ``s`` is ``preprocess.input_size``.

    Args:
        preprocess: the datamodule's options.
        mean: the mean image ``[C, S, S]`` in [0, 1], when ``preprocess.mean_image``.
    """

    mean: torch.Tensor | None  # a buffer, None without mean_image; typed here as in SubtractMeanImage

    def __init__(self, preprocess: Preprocessing, mean: torch.Tensor | None):
        super().__init__()
        if preprocess.mean_image and mean is None:
            raise InvalidValueError("data.preprocess.mean_image=true but no mean image was computed (call prepare_data "
                                    "first)")
        self.preprocess = preprocess
        self.register_buffer("mean", mean.float() if preprocess.mean_image and mean is not None else None,
                             persistent=False)

    def _mean_on(self, device: torch.device) -> torch.Tensor | None:
        if self.mean is not None and self.mean.device != device:
            self.to(device)  # once: the mean image then stays on the training device
        return self.mean

    def _normalise(self, images: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
        """uint8 -> [0, 1], minus the mean, times ``pixel_scale``: paper_transform's steps in its order (in place
        on the new float tensor: the same arithmetic, no further allocations)."""
        x = TF.to_dtype(images, torch.float32, scale=True)
        if mean is not None:
            if images.shape[-3:] != mean.shape[-3:]:
                raise InvalidValueError(f"images of shape {tuple(images.shape[-3:])} do not match the mean image "
                                        f"{tuple(mean.shape[-3:])}; was the mean computed with other resize/crop "
                                        "settings?")
            x.sub_(mean)
        return x.mul_(self.preprocess.pixel_scale) if self.preprocess.pixel_scale != 1.0 else x

    def train_batch(self, images: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, S]`` uint8 and ``[B, 3]`` crops -> ``[B, C, s, s]`` float training inputs."""
        size = self.preprocess.input_size
        mean = self._mean_on(images.device)
        if mean is not None:
            # The mean cut at each image's crop: the same pixels the full-size subtraction would leave.
            mean = crop_flip(mean.expand(images.shape[0], -1, -1, -1), crops, size)
        return self._normalise(crop_flip(images, crops, size), mean)

    def eval_batch(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, S]`` uint8 -> the centre crop ``[B, C, s, s]`` or the 10 crops ``[B, 10, C, s, s]``."""
        x = self._normalise(images, self._mean_on(images.device))
        size = [self.preprocess.input_size] * 2
        if self.preprocess.ten_crop:
            return torch.stack(TF.ten_crop(x, size), dim=1)
        return TF.center_crop(x, size)

    def forward(self, batch: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's batch: three items (with crops) is a training batch, two an evaluation batch."""
        if len(batch) == 3:
            images, labels, crops = batch
            return self.train_batch(images, crops), labels
        images, labels = batch
        return self.eval_batch(images), labels
