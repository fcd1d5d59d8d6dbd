"""The per-pixel mean image the paper subtracts: computed once over the training split, cached next to the data
(or in the user's cache when the data's folder is read-only) and read back safely; files written atomically."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from zfexp.data.classes import dataset_size
from zfexp.data.files import write_atomic
from zfexp.data.sampling import private_generator
from zfexp.data.transforms import Preprocessing, pixels_transform
from zfexp.errors import CheckpointError, InvalidValueError, UnsafeFileError
from zfexp.runs.progress import progress
from zfexp.safe_load import load_torch_file

# To the type checker the mixin is the LightningDataModule it is mixed into (whose trainer, hparams and state_dict
# it uses); at runtime a plain class, ahead of LightningDataModule in the datamodule's bases.
if TYPE_CHECKING:
    from lightning import LightningDataModule as _DataModule
    from lightning.fabric.utilities.data import AttributeDict
else:
    _DataModule = object

log = logging.getLogger(__name__)


def compute_mean_image(dataset: Dataset, batch_size: int = 256, num_workers: int = 0,
                       desc: str = "mean image") -> torch.Tensor:
    """Per-pixel mean ``[C, H, W]`` in [0, 1] over a dataset of ``(image [C, H, W], label)``: uint8 images
    (summed exactly in int64, divided by 255) or float images in [0, 1] (float64 accumulation)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                        generator=private_generator(0))
    total: torch.Tensor | None = None
    count, scale = 0, 1.0
    for images, _ in progress(loader, len(loader), desc):
        exact = images.dtype == torch.uint8
        scale = 255.0 if exact else 1.0
        batch_sum = images.to(torch.int64 if exact else torch.float64).sum(0)
        total = batch_sum if total is None else total + batch_sum
        count += images.shape[0]
    if total is None:
        raise InvalidValueError("cannot compute a mean image over an empty training set")
    return (total.to(torch.float64) / (scale * count)).float()


class MeanImage(_DataModule):
    """The datamodule's mean image (mixed into :class:`~zfexp.data.base.ImageClassificationDataModule`, whose
    ``root``, ``name``, ``preprocess``, ``hparams``, splits and classes it reads): ``self.mean`` ``[C, H, W]`` in
    [0, 1], from the cache or computed and cached, keyed by everything that changes it."""

    # The datamodule's attributes it reads (and ``mean``, which it sets).
    name: str
    root: Path
    preprocess: Preprocessing
    mean: torch.Tensor | None
    if TYPE_CHECKING:  # for the type checker only: at runtime the datamodule and LightningDataModule define them
        hparams: AttributeDict  # LightningDataModule's property, which save_hyperparameters() fills with one

        @property
        def all_classes(self) -> list[str]: ...

        @property
        def kept_classes(self) -> list[int]: ...

        def _split(self, split: str, transform) -> Dataset: ...

        def _split_indices(self, n_train_full: int) -> tuple[list[int], list[int]]: ...

    @property
    def cache_dir(self) -> Path:
        """The folder the mean image is cached in: the data's ``root`` (a subclass may name another). When it is
        not writable, :meth:`_mean_cache_path` uses the user's cache, ``$XDG_CACHE_HOME/zfexp``, instead."""
        return self.root

    def _mean_cache_path(self, n_train_full: int) -> Path:
        p = self.preprocess
        # The data's own folder is part of the key: the user's cache dir is shared by every dataset there.
        key = f"v2|{self.name}|{self.root.resolve()}|{n_train_full}|{p.resize}|{p.crop}|{self.hparams.val_size}|" \
              f"{self.hparams.split_seed}|{self.hparams.subset_size}"
        if len(self.kept_classes) != len(self.all_classes):
            key += f"|classes={self.kept_classes}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        name = f"{self.name}_mean_r{p.resize}_c{p.crop}_{digest}.pt"
        cache = self.cache_dir
        if not os.access(cache if cache.exists() else cache.parent, os.W_OK):
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zfexp"
        return cache / name

    def _load_or_compute_mean(self) -> torch.Tensor:
        train_full = self._split("train", pixels_transform(self.preprocess))
        path = self._mean_cache_path(dataset_size(train_full))
        if path.exists():
            try:
                cached = load_torch_file(path, "mean image cache", what="a mean image cached by zfexp",
                                         remedy=f"It is a cache that zfexp did not write: delete it (rm {path}), and "
                                         "the mean image is computed again.")
                if isinstance(cached, torch.Tensor):
                    return cached
                log.warning("mean image cache %s holds a %s; recomputing", path, type(cached).__name__)
            except UnsafeFileError:
                raise
            except CheckpointError as err:  # a truncated cache file: recompute rather than fail
                log.warning("mean image cache %s is unreadable (%s); recomputing", path, err)
        train_idx, _ = self._split_indices(dataset_size(train_full))
        mean = compute_mean_image(Subset(train_full, train_idx), num_workers=self.hparams.num_workers,
                                  desc=f"{self.name} mean image")
        write_atomic(path, lambda tmp: torch.save(mean, tmp))
        log.info("mean image %s cached at %s", tuple(mean.shape), path)
        return mean

    def state_dict(self) -> dict[str, Any]:
        """The mean image goes into every checkpoint: a network transferred from it sees its inputs normalised
        as in its training."""
        state = super().state_dict()
        if self.mean is not None:
            state["mean_image"] = self.mean
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("mean_image") is not None:
            self.mean = state_dict["mean_image"]

    def _ensure_mean(self) -> None:
        """``self.mean``, once, when the preprocessing subtracts it: from the cache or computed; a mean image
        already set (brought by a pretrained network, or restored from a checkpoint) is kept."""
        if self.preprocess.mean_image and self.mean is None:
            self.mean = self._load_or_compute_mean()
