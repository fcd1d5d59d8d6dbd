"""ImageNet (or any dataset in the same layout) read with torchvision's ``ImageFolder``::

    <root>/train/<class>/<image>   training images (1.3M for ILSVRC-2012)
    <root>/val/<class>/<image>     validation images (50k), also the test split: ImageNet's test labels
                                   are not public, and the paper reports validation error.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.functional import pil_to_tensor

from zfexp.data.base import ImageClassificationDataModule
from zfexp.data.dali import DECODERS, DaliLoader, DaliSplit, check_dali_device, image_files, import_dali
from zfexp.errors import CorruptImageError, DatasetNotFoundError, InvalidValueError


def load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader, with an error that names the file when it cannot be decoded."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"cannot read image {path}: {err}. Replace or delete this file: it is named as an "
                                f"image ({', '.join(IMG_EXTENSIONS)}) but cannot be decoded as one.") from err


def load_pixels(path: str) -> torch.Tensor:
    """An image file as RGB ``uint8 [3, H, W]``: ImageFolder's loader for the datamodules.

    torchvision decodes JPEG, PNG, WebP and GIF straight into a tensor with the same libraries as PIL and
    the same pixels (tested), without PIL's image object and its conversion (``benchmarks/input_pipeline.py``
    compares the two). PIL reads the other formats (BMP, TIFF, PPM), and names a file neither can decode."""
    try:
        pixels = decode_image(path, mode=ImageReadMode.RGB)
    except RuntimeError:  # a format torchvision does not decode, or a broken file: PIL says which
        pixels = None
    if pixels is None or pixels.ndim != 3:  # an animated GIF decodes to frames; PIL reads the first
        pixels = pil_to_tensor(load_rgb(path))
    return pixels


def image_folder(path: Path, transform, key: str) -> ImageFolder:
    """torchvision's ``ImageFolder`` of ``path``, with an error naming the config ``key`` and the folder when a
    class folder holds no image."""
    try:
        return ImageFolder(str(path), transform=transform, loader=load_pixels)
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"{key}: {path} has class folders without images ({err}). Every class folder needs "
                                   "at least one image; remove the empty ones or fill them.") from err


class ImageFolderDataModule(ImageClassificationDataModule):
    """Train/val folders in the ImageFolder layout; the paper's defaults are for ImageNet at 224.

    ``decoder="dali"`` decodes and cuts the images on the GPU with NVIDIA DALI (:mod:`zfexp.data.dali`, an
    optional extra) instead of in loader processes; the preprocessing after the centre crop is the same."""

    name = "imagenet"
    has_val_split = True
    num_channels = 3

    decoders = DECODERS

    def __init__(self, root: str, train_dir: str = "train", val_dir: str = "val", test_dir: str | None = None,
                 **kwargs):
        super().__init__(root, **kwargs)
        self.split_dirs = {"train": train_dir, "val": val_dir, "test": test_dir or val_dir}
        if self.decoder == "dali":
            if self.augment_on == "workers":
                raise InvalidValueError("data.decoder=dali needs data.augment_on=device or auto (DALI yields uint8 "
                                        "batches on the GPU), got workers")
            self.augment_on = "device"
            import_dali()  # a missing extra is said now, before anything is read or trained

    def _split_path(self, split: str) -> Path:
        path = self.root / self.split_dirs[split]
        if not path.is_dir():
            raise DatasetNotFoundError(
                f"data.root={self.root}: no {split} folder {path}. Expected the ImageFolder layout "
                f"<root>/{self.split_dirs['train']}/<class>/<image> and "
                f"<root>/{self.split_dirs['val']}/<class>/<image>; for ImageNet, extract ILSVRC2012_img_train.tar and "
                "ILSVRC2012_img_val.tar into it (val sorted into class folders).")
        return path

    @cached_property
    def all_classes(self) -> list[str]:
        try:
            classes, _ = find_classes(str(self._split_path("train")))
        except FileNotFoundError as err:
            if isinstance(err, DatasetNotFoundError):
                raise
            raise DatasetNotFoundError(f"data.root={self.root}: {err}") from err
        return classes

    def _ensure_files(self) -> None:
        for split in ("train", "val", "test"):
            self._split_path(split)
        train_classes = set(self.all_classes)
        val_classes = set(find_classes(str(self._split_path("val")))[0])
        if not val_classes <= train_classes:
            raise DatasetNotFoundError(f"data.root={self.root}: validation classes "
                                       f"{sorted(val_classes - train_classes)} have no training folder; val/ must use "
                                       "the class names of train/")

    def _folder(self, split: str, transform) -> ImageFolder:
        path = self._split_path(split)
        # Map val/test onto the training class indices, so a val folder missing a class keeps labels aligned.
        class_to_idx = {c: i for i, c in enumerate(self.all_classes)}
        folder = image_folder(path, transform, key="data.root")
        if folder.class_to_idx != class_to_idx:
            folder.samples = [(p, class_to_idx[folder.classes[y]]) for p, y in folder.samples]
            folder.targets = [y for _, y in folder.samples]
            folder.class_to_idx, folder.classes = class_to_idx, self.all_classes
        return folder

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.decoder == "dali" and self.trainer is not None:
            check_dali_device(self.trainer.strategy.root_device)  # before the first batch

    def _dali_loader(self, split: str) -> DaliLoader:
        """This rank's share of ``split``, in the default loaders' order, decoded by DALI on this rank's GPU."""
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cuda", 0)
        check_dali_device(device)
        dataset = self._made_split(split)
        sampler = self.train_sampler() if split == "train" else self.evaluation_sampler(dataset)
        return DaliLoader(DaliSplit(image_files(dataset), self.preprocess, self.hparams.batch_size,
                                    train=split == "train", device="gpu", device_id=device.index or 0,
                                    num_threads=max(1, self.hparams.num_workers)), sampler)

    def train_dataloader(self):
        return self._dali_loader("train") if self.decoder == "dali" else super().train_dataloader()

    def val_dataloader(self):
        return self._dali_loader("val") if self.decoder == "dali" else super().val_dataloader()

    def test_dataloader(self):
        return self._dali_loader("test") if self.decoder == "dali" else super().test_dataloader()

    def _train_dataset(self, transform):
        return self._folder("train", transform)

    def _val_dataset(self, transform):
        return self._folder("val", transform)

    def _test_dataset(self, transform):
        return self._folder("test", transform)
