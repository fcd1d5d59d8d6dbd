"""ImageNet (or any dataset in the same layout) read with torchvision's ``ImageFolder``::

    <root>/train/<class>/<image>   training images (1.3M for ILSVRC-2012)
    <root>/val/<class>/<image>     validation images (50k), also the test split: ImageNet's test labels
                                   are not public, and the paper reports validation error.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from zfexp.data.base import ImageClassificationDataModule
from zfexp.errors import CorruptImageError, DatasetNotFoundError


def load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader, with an error that names the file when it cannot be decoded."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"cannot read image {path}: {err}. Replace or delete this file; every file under "
                                f"the split folders must be an image ({', '.join(IMG_EXTENSIONS)}).") from err


def image_folder(path: Path, transform, key: str) -> ImageFolder:
    """torchvision's ``ImageFolder`` of ``path``, with an error naming the config ``key`` and the folder when a
    class folder holds no image."""
    try:
        return ImageFolder(str(path), transform=transform, loader=load_rgb)
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"{key}: {path} has class folders without images ({err}). Every class folder needs "
                                   "at least one image; remove the empty ones or fill them.") from err


class ImageFolderDataModule(ImageClassificationDataModule):
    """Train/val folders in the ImageFolder layout; the paper's defaults are for ImageNet at 224."""

    name = "imagenet"
    has_val_split = True
    num_channels = 3

    def __init__(self, root: str, train_dir: str = "train", val_dir: str = "val", test_dir: str | None = None,
                 **kwargs):
        super().__init__(root, **kwargs)
        self.split_dirs = {"train": train_dir, "val": val_dir, "test": test_dir or val_dir}

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

    def _train_dataset(self, transform):
        return self._folder("train", transform)

    def _val_dataset(self, transform):
        return self._folder("val", transform)

    def _test_dataset(self, transform):
        return self._folder("test", transform)
