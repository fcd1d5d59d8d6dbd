"""CIFAR-10 with torchvision's ``CIFAR10`` (downloaded by torchvision when ``download=true``)."""

from __future__ import annotations

from torchvision.datasets import CIFAR10

from zfexp.data.base import ImageClassificationDataModule
from zfexp.errors import DatasetNotFoundError


class CIFAR10DataModule(ImageClassificationDataModule):
    """50k training (5k held out for validation by default) / 10k test colour 32x32 images, 10 classes."""

    name = "cifar10"
    num_channels = 3
    image_size = 32
    all_classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(self, root: str, download: bool = True, **kwargs):
        super().__init__(root, **kwargs)
        self.download = download

    def _ensure_files(self) -> None:
        try:
            CIFAR10(str(self.root), train=True, download=self.download)
            CIFAR10(str(self.root), train=False, download=self.download)
        except (RuntimeError, OSError, EOFError, ValueError) as err:
            raise DatasetNotFoundError(
                f"CIFAR-10 could not be read from data.root={self.root} (expected "
                f"{self.root / CIFAR10.base_folder}/data_batch_1..5 and test_batch; download={self.download}): "
                f"{err}. Set data.download=true on a machine with internet access, or point data.root at a folder "
                f"holding {CIFAR10.base_folder}/.") from err

    def _train_dataset(self, transform):
        return CIFAR10(str(self.root), train=True, transform=transform)

    def _test_dataset(self, transform):
        return CIFAR10(str(self.root), train=False, transform=transform)
