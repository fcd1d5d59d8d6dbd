"""Fashion-MNIST (the embedded default): torchvision's ``FashionMNIST``, fed from the Debian package
``dataset-fashion-mnist`` when it is installed, downloaded by torchvision otherwise."""

from __future__ import annotations

import gzip
import shutil
from functools import partial
from pathlib import Path

from torchvision.datasets import FashionMNIST
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from zfexp.data.base import ImageClassificationDataModule
from zfexp.data.few_shot import FewShotDataModule
from zfexp.data.files import write_atomic
from zfexp.errors import DatasetNotFoundError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
HOW_TO_GET = ("install the Debian package (apt-get install dataset-fashion-mnist), or set data.download=true "
              "on a machine with internet access, or point data.root at a folder holding FashionMNIST/raw/")


def _gunzip(src: Path, dst: Path) -> None:
    with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)


class FashionMNISTDataModule(ImageClassificationDataModule):
    """60k training (5k held out for validation by default) / 10k test grey 28x28 images, 10 classes."""

    name = "fashion_mnist"
    num_channels = 1
    image_size = 28
    all_classes = list(FashionMNIST.classes)
    RAW_SHAPES = {"train-images-idx3-ubyte": (60000, 28, 28), "train-labels-idx1-ubyte": (60000,),
                  "t10k-images-idx3-ubyte": (10000, 28, 28), "t10k-labels-idx1-ubyte": (10000,)}

    def __init__(self, root: str, download: bool = True, debian_dir: str | None = DEBIAN_DIR, **kwargs):
        super().__init__(root, **kwargs)
        self.download = download
        self.debian_dir = Path(debian_dir) if debian_dir else None

    @property
    def raw_dir(self) -> Path:
        return self.root / "FashionMNIST" / "raw"

    def _ensure_files(self) -> None:
        """Extract the Debian package's archives where torchvision expects the raw files, so nothing is
        fetched from the network when the package is installed (Debian recompresses the archives, so
        torchvision's md5 of the downloaded .gz does not apply; the decoded files are checked on load)."""
        names = [Path(url).name for url, _ in FashionMNIST.resources]
        if self.debian_dir is not None and self.debian_dir.is_dir():
            self.raw_dir.mkdir(parents=True, exist_ok=True)
            for name in names:
                src, dst = self.debian_dir / name, self.raw_dir / name.removesuffix(".gz")
                if src.exists() and not dst.exists():
                    # An interrupted copy never looks complete.
                    write_atomic(dst, partial(_gunzip, src))
        missing = [str(self.raw_dir / n) for n in self.RAW_SHAPES if not (self.raw_dir / n).exists()]
        if missing:
            if not self.download:
                raise DatasetNotFoundError(f"Fashion-MNIST is missing under data.root={self.root}: "
                                           f"{', '.join(missing)} not found (data.download=false). To get it: "
                                           f"{HOW_TO_GET}.")
            try:
                FashionMNIST(str(self.root), train=True, download=True)  # fetches train and test files
            except (RuntimeError, OSError) as err:
                raise DatasetNotFoundError(f"Fashion-MNIST is missing under data.root={self.root} "
                                           f"({', '.join(missing)}) and the download failed: {err}. To get it: "
                                           f"{HOW_TO_GET}.") from err
        for name, shape in self.RAW_SHAPES.items():
            self._check_raw_file(self.raw_dir / name, shape)

    @staticmethod
    def _check_raw_file(path: Path, shape: tuple[int, ...]) -> None:
        """Decode one idx file and check its shape, naming the file when it is corrupt."""
        try:
            data = read_sn3_pascalvincent_tensor(str(path), strict=False)
        except Exception as err:  # truncated files fail in numpy/torch with many exception types
            data, reason = None, f"{type(err).__name__}: {err}"
        else:
            reason = f"holds shape {tuple(data.shape)}, expected {shape}"
        if data is None or tuple(data.shape) != shape:
            raise DatasetNotFoundError(f"Fashion-MNIST file {path} is corrupt ({reason}). Delete it and run again to "
                                       f"extract or download it afresh; to get the files: {HOW_TO_GET}.")

    def _dataset(self, train: bool, transform) -> FashionMNIST:
        try:
            return FashionMNIST(str(self.root), train=train, transform=transform, download=False)
        except (RuntimeError, OSError, EOFError, ValueError, AssertionError) as err:
            raise DatasetNotFoundError(
                f"Fashion-MNIST is missing or corrupt under {self.raw_dir}: {err}. To get it: {HOW_TO_GET}.") from err

    def _train_dataset(self, transform):
        return self._dataset(True, transform)

    def _test_dataset(self, transform):
        return self._dataset(False, transform)


class FashionMNISTFewShotDataModule(FewShotDataModule, FashionMNISTDataModule):
    """N images per class (and up to ``test_per_class`` test images) drawn from Fashion-MNIST's 60k training
    images: the offline stand-in for Caltech in the transfer experiments."""

    name = "fashion_mnist_few_shot"
