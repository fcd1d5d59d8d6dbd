"""Caltech-101 and Caltech-256 (torchvision's datasets; they download when online) and any folder of class
folders, as few-shot datamodules for the paper's transfer experiments (Tables 4 and 5, Fig. 9).

Layouts, under ``data.root``::

    caltech101/101_ObjectCategories/<class>/image_0001.jpg        (BACKGROUND_Google is not a class)
    caltech256/256_ObjectCategories/<NNN.class>/<NNN>_0001.jpg
    <class>/<image>                                             (ImageFolderFewShotDataModule)
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from PIL import Image
from torchvision.datasets import Caltech101, Caltech256
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.transforms import v2

from zfexp.data.few_shot import FewShotDataModule
from zfexp.data.imagenet import image_folder
from zfexp.errors import DatasetNotFoundError


class ToRGB:
    """PIL image in any mode -> RGB (a few Caltech images are greyscale)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")


def _rgb_first(transform):
    return v2.Compose([ToRGB(), transform]) if transform is not None else ToRGB()


class _CaltechFewShot(FewShotDataModule):
    """What Caltech-101 and -256 share: torchvision's class, a clear error when the files are missing."""

    num_channels = 3
    dataset_class: type
    folder: str  # the folder torchvision expects under <root>/<name>/
    url: str

    def __init__(self, root: str, download: bool = True, **kwargs):
        super().__init__(root, **kwargs)
        self.download = download

    def _open(self, transform=None, download: bool = False):
        try:
            return self.dataset_class(str(self.root), transform=transform, download=download)
        except (RuntimeError, OSError, ValueError) as err:
            expected = self.root / self.name / self.folder
            raise DatasetNotFoundError(
                f"{self.name}: no images under {expected} ({err}). Download it from {self.url} and extract it so that "
                f"{expected}/<class>/ holds the images, or set data.download=true on a machine with internet access."
            ) from err

    def _ensure_files(self) -> None:
        self._open(download=self.download)

    @cached_property
    def all_classes(self) -> list[str]:
        return list(self._open().categories)

    def _train_dataset(self, transform):
        return self._open(_rgb_first(transform))


class Caltech101DataModule(_CaltechFewShot):
    """Caltech-101: 101 classes, 31 to 800 images each (paper: 15 or 30 per class to train)."""

    name = "caltech101"
    dataset_class = Caltech101
    folder = "101_ObjectCategories"
    url = "https://data.caltech.edu/records/mzrjq-6wc02"


class Caltech256DataModule(_CaltechFewShot):
    """Caltech-256: 256 object classes plus ``257.clutter`` (left out by the config), at least 80 images each."""

    name = "caltech256"
    dataset_class = Caltech256
    folder = "256_ObjectCategories"
    url = "https://data.caltech.edu/records/nyy15-4j048"


class ImageFolderFewShotDataModule(FewShotDataModule):
    """Any ``<root>/<class>/<image>`` tree as a few-shot pool (PASCAL-style crops, a new dataset of one's own)."""

    name = "image_folder"
    num_channels = 3

    @property
    def all_classes(self) -> list[str]:
        try:
            return find_classes(str(self.root))[0]
        except FileNotFoundError as err:
            raise DatasetNotFoundError(f"data.root={self.root}: {err}. Expected <root>/<class>/<image> with images "
                                       f"({', '.join(IMG_EXTENSIONS)}).") from err

    def _ensure_files(self) -> None:
        if not Path(self.root).is_dir():
            raise DatasetNotFoundError(f"data.root={self.root}: no such folder; expected <root>/<class>/<image>")
        self.all_classes  # noqa: B018  (raises when there is no class folder with images)

    def _train_dataset(self, transform):
        return image_folder(self.root, transform, key="data.root")
