"""The paper's transfer protocol (Sec. 5.2): from one labelled pool, N training images per class and up to 50
test images per class, drawn at random; results averaged over 5 such folds. Any datamodule of zfexp becomes a
few-shot one by putting :class:`FewShotDataModule` before it in the bases (its training set is the pool).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from torch.utils.data import Dataset, Subset

from zfexp.checks import integer, positive_int
from zfexp.data.base import ImageClassificationDataModule
from zfexp.data.classes import dataset_targets
from zfexp.data.transforms import paper_transform
from zfexp.errors import InvalidValueError


def check_split_args(train_per_class: int, test_per_class: int | None, fold: int) -> None:
    positive_int("data.train_per_class", train_per_class)
    positive_int("data.test_per_class", test_per_class, null="all the rest")
    integer("data.fold", fold, low=0)


def few_shot_split(targets: Sequence[int], train_per_class: int, test_per_class: int | None = 50,
                   fold: int = 0, seed: int = 0, class_names: Sequence[str] | None = None
                   ) -> tuple[list[int], list[int]]:
    """``(train indices, test indices)`` into a pool with labels ``targets``: for every class, a random
    permutation of its items (seeded by ``seed`` and ``fold``), the first ``train_per_class`` for training and
    the next ``test_per_class`` (all the rest when ``None``) for testing. Both lists are sorted.

    A class with no more than ``train_per_class`` items (no test image left) is an error that names it
    (``class_names[label]`` where given).
    """
    check_split_args(train_per_class, test_per_class, fold)
    labels = np.asarray(targets)
    rng = np.random.default_rng([seed, fold])
    train, test = [], []
    for label in np.unique(labels):
        items = np.flatnonzero(labels == label)
        if len(items) <= train_per_class:
            name = f"{int(label)} ({class_names[int(label)]})" if class_names is not None else str(int(label))
            raise InvalidValueError(f"data.train_per_class={train_per_class}: class {name} has only {len(items)} "
                                    f"images, so none is left to test on; valid: at most {len(items) - 1} for this "
                                    "pool")
        order = rng.permutation(items)
        train += order[:train_per_class].tolist()
        end = None if test_per_class is None else train_per_class + test_per_class
        test += order[train_per_class:end].tolist()
    return sorted(train), sorted(test)


class FewShotDataModule(ImageClassificationDataModule):
    """N images per class to train on and up to ``test_per_class`` to test on, fold ``fold``, from the pool
    that the next base class calls its training set.

    There is no validation split in the paper's protocol: ``val`` is the test split, so the transfer
    experiments train a fixed schedule and choose nothing on it (no best checkpoint, no LR plateau).

    Args:
        train_per_class: N (paper: 15, 30, 45, 60).
        test_per_class: at most this many test images per class (paper: 50); ``None``: all the rest.
        fold: which random draw (paper: 5 folds, 0..4); ``split_seed`` seeds all of them.
        epoch_size: images per training epoch, cycling through the small training set (``None``: one pass;
            with 5 images per class an epoch would otherwise be a single step).
    """

    has_val_split = True

    def __init__(self, root: str, train_per_class: int = 30, test_per_class: int | None = 50, fold: int = 0,
                 epoch_size: int | None = 10240, **kwargs):
        kwargs.setdefault("val_size", 0)
        super().__init__(root, **kwargs)
        positive_int("data.epoch_size", epoch_size, null="one pass over the training images", unit="images")
        self.train_per_class, self.test_per_class = train_per_class, test_per_class
        self.fold, self.epoch_size = fold, epoch_size
        check_split_args(train_per_class, test_per_class, fold)  # before anything is read

    @cached_property
    def split_indices(self) -> tuple[list[int], list[int]]:
        """``(train, test)`` indices into the pool (the kept classes of the training set)."""
        targets = dataset_targets(self._split("train", None))
        return few_shot_split(targets, self.train_per_class, self.test_per_class, self.fold,
                              self.hparams.split_seed, class_names=self.classes)

    def pool_dataset(self) -> Dataset:
        """Every image of the pool (kept classes), one centre crop each ``[C, S, S]``, indexed as
        :attr:`split_indices`: what features are extracted from."""
        self._ensure_mean()
        single = dataclasses.replace(self.preprocess, ten_crop=False)
        return self._split("train", paper_transform(single, self.mean, train=False))

    def _train_indices(self, n_train_full: int) -> list[int]:
        return self.split_indices[0]

    def _eval_splits(self, transform) -> tuple[Dataset, Dataset]:
        test = Subset(self._split("train", transform), self.split_indices[1])
        return test, test

    def train_epoch_size(self) -> int | None:
        # Without replacement: every image is seen equally often within an epoch.
        return self.epoch_size
