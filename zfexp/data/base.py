"""What every image-classification datamodule shares: the paper's preprocessing, the per-pixel mean
image (computed once, cached next to the data), a fixed-seed validation split, subsets for quick runs.

A subclass says where the images come from by implementing ``_train_dataset(transform)``,
``_test_dataset(transform)`` and, when the dataset ships its own validation set,
``_val_dataset(transform)``; plus ``all_classes`` (the dataset's class names) and ``num_channels``; and may
name another ``cache_dir`` for the mean image than the data's root (:class:`~zfexp.data.mean_image.MeanImage`).
On a GPU each batch is copied on a stream of its own (:class:`~zfexp.data.device_copy.CopyOnSideStream`).
Every datamodule can keep some of its classes (``class_subset``, ``exclude_classes``): their images only,
relabelled 0..k-1 in the dataset's order. The loaders and the state kept in checkpoints are
:class:`~zfexp.data.loaders.SeededLoaders`'.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from zfexp.checks import integer, one_of, positive_int
from zfexp.data.batch_preprocessing import BatchPreprocessing
from zfexp.data.classes import ClassSubset, dataset_size, dataset_targets, select_classes
from zfexp.data.device_copy import CopyOnSideStream
from zfexp.data.loaders import SeededLoaders
from zfexp.data.mean_image import MeanImage
from zfexp.data.transforms import Preprocessing, paper_transform, pixels_transform
from zfexp.errors import InvalidValueError

log = logging.getLogger(__name__)


AUGMENT_ON = ("auto", "device", "workers")


class ImageClassificationDataModule(CopyOnSideStream, MeanImage, SeededLoaders, L.LightningDataModule):
    """Base of the datamodules: ``preprocess`` holds the :class:`Preprocessing` options.

    Batches are ``(images [B, C, S, S], labels [B])`` for training and, with ``ten_crop``, evaluation
    batches are ``(images [B, 10, C, S, S], labels [B])``.

    With ``augment_on="device"`` the loaders yield uint8 images at the centre crop's size, with each training
    image's crop and flip drawn, and :meth:`on_after_batch_transfer` makes the batches above on the training
    device (:class:`~zfexp.data.batch_preprocessing.BatchPreprocessing`); ``"workers"`` does all of it per image
    in the loader workers. Both give the same numbers; ``"auto"`` (the default) picks the faster, see
    :meth:`resolve_augment_on`.

    The training order and every random crop and flip come from the data seed (the run's seed,
    ``torch.initial_seed()`` when training starts, kept in checkpoints) through :class:`SeededSampler`, never
    from the global random generators; the training loader (:class:`~zfexp.data.sampling.ResumableLoader`) keeps
    its position in the epoch, so a run resumed from a mid-epoch checkpoint, with any number of loader workers,
    sees the rest of the epoch's batches, augmented as they would have been.
    """

    name = "dataset"
    has_val_split = False  # True when the dataset ships a validation set

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        num_workers: int = 8,
        preprocess: Mapping[str, Any] | None = None,
        val_size: int = 5000,
        split_seed: int = 0,
        subset_size: int | None = None,
        pin_memory: bool = True,
        class_subset: list[int | str] | None = None,
        exclude_classes: Sequence[int | str] = (),
        augment_on: str = "auto",
        decoder: str = "cpu",
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = Path(os.path.expanduser(str(root)))
        self.preprocess = Preprocessing(**dict(preprocess or {}))
        if self.image_size is not None:
            self.preprocess.check_native_size(self.image_size)
        positive_int("data.batch_size", batch_size)
        integer("data.num_workers", num_workers, low=0, unit="loader processes; 0: load in the training process")
        positive_int("data.subset_size", subset_size, null="all images")
        integer("data.val_size", val_size, low=0)
        if not self.has_val_split and val_size <= 0:
            raise InvalidValueError(f"data.val_size={val_size}: {self.name} has no validation set, so a positive "
                                    "number of training images must be held out for it")
        one_of("data.augment_on", augment_on, AUGMENT_ON,
               "auto: device on a GPU or without loader processes, else workers; device: uint8 batches, cropped, "
               "flipped and normalised on the training device; workers: all of it per image in the loader processes")
        if augment_on == "device" and self.preprocess.resize is not None and self.preprocess.crop is None:
            raise InvalidValueError(
                f"data.augment_on=device needs images of one size to batch them, but data.preprocess.crop=null with "
                f"resize={self.preprocess.resize} keeps each image's aspect ratio; set data.preprocess.crop (the "
                "paper: 256) or data.augment_on=workers")
        if decoder not in self.decoders:
            dali = " (dali decodes the image files of an ImageFolder tree on the GPU: data=imagenet)" \
                if decoder == "dali" else ""
            raise InvalidValueError(f"data.decoder={decoder!r}; valid for {self.name}: {', '.join(self.decoders)} "
                                    f"(cpu: decoded in the loader processes){dali}")
        self.decoder = decoder
        self.augment_on = augment_on  # "auto" is resolved in setup()
        self.batch_preprocessing: BatchPreprocessing | None = None
        self.class_subset = list(class_subset) if class_subset is not None else None
        self.exclude_classes = list(exclude_classes or [])
        self.mean: torch.Tensor | None = None
        self.seed: int | None = None  # the data seed; set when the training loader is first made
        self.data_train: Subset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None
        self._analysis_splits: tuple[Dataset, Dataset] | None = None

    # -- what subclasses provide -------------------------------------------------------------------
    if TYPE_CHECKING:  # read-only: a class attribute, or a property when the names are read from the files
        @property
        def all_classes(self) -> list[str]:
            """The dataset's class names, index = the dataset's label."""

    num_channels: int
    image_size: int | None = None  # the side of every image, for datasets of one size (checked against preprocess)
    decoders: tuple[str, ...] = ("cpu",)  # the values of ``decoder`` this dataset can take

    def _train_dataset(self, transform) -> Dataset:
        raise NotImplementedError

    def _val_dataset(self, transform) -> Dataset:
        raise NotImplementedError

    def _test_dataset(self, transform) -> Dataset:
        raise NotImplementedError

    # -- classes ---------------------------------------------------------------------------------------
    @cached_property
    def kept_classes(self) -> list[int]:
        """The dataset labels kept (``class_subset`` minus ``exclude_classes``), in the dataset's order."""
        return select_classes(list(self.all_classes), self.class_subset, self.exclude_classes)

    @property
    def classes(self) -> list[str]:
        """Names of the classes the network sees, index = label."""
        return [self.all_classes[i] for i in self.kept_classes]

    @property
    def num_classes(self) -> int:
        return len(self.kept_classes)

    def _keep_classes(self, dataset: Dataset) -> Dataset:
        """``dataset`` limited to the kept classes and relabelled 0..k-1; itself when all are kept."""
        if len(self.kept_classes) == len(self.all_classes):
            return dataset
        return ClassSubset(dataset, dataset_targets(dataset), self.kept_classes)

    def _split(self, split: str, transform) -> Dataset:
        """The ``split`` ("train", "val", "test") of the dataset with ``transform``, kept classes only."""
        hooks = {"train": self._train_dataset, "val": self._val_dataset, "test": self._test_dataset}
        return self._keep_classes(hooks[split](transform))

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    # -- splits ----------------------------------------------------------------------------------------
    def _split_indices(self, n_train_full: int) -> tuple[list[int], list[int]]:
        """Fixed-seed (train, val) index lists into the full training set; val empty if the dataset has one."""
        g = torch.Generator().manual_seed(self.hparams.split_seed)
        order = torch.randperm(n_train_full, generator=g).tolist()
        if self.has_val_split:
            train_idx, val_idx = order, []
        else:
            if self.hparams.val_size >= n_train_full:
                raise InvalidValueError(f"data.val_size={self.hparams.val_size} leaves no training images ({self.name} "
                                        f"has {n_train_full}); valid: 1..{n_train_full - 1}")
            val_idx, train_idx = order[: self.hparams.val_size], order[self.hparams.val_size:]
        if self.hparams.subset_size:
            train_idx, val_idx = train_idx[: self.hparams.subset_size], val_idx[: self.hparams.subset_size]
        return sorted(train_idx), sorted(val_idx)

    def _subset(self, dataset: Dataset, seed_offset: int = 1) -> Dataset:
        n = self.hparams.subset_size
        size = dataset_size(dataset)
        if not n or n >= size:
            return dataset
        g = torch.Generator().manual_seed(self.hparams.split_seed + seed_offset)
        return Subset(dataset, sorted(torch.randperm(size, generator=g)[:n].tolist()))

    # -- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Runs on one process per node: fetch files if needed and cache the mean image."""
        self._ensure_files()
        self._ensure_mean()

    def _ensure_files(self) -> None:
        """Make the raw files available under ``root``; raise with a clear message when they are not."""

    def resolve_augment_on(self) -> str:
        """``augment_on="auto"``: ``"device"`` when the trainer runs on a GPU (there the batched step is a few
        kernels and the loader processes send a quarter of the bytes) or when there are no loader processes (the
        per-image work would run in the training process anyway, and batched it is 1.7x faster on Fashion-MNIST);
        ``"workers"`` when a CPU trains beside loader processes (they do the float work in parallel with it,
        while the batched step would take the training process's time: 0.8x on ImageNet-sized JPEGs on 2
        cores). Also ``"workers"`` when the images cannot be batched (``resize`` without ``crop``)."""
        if self.augment_on != "auto":
            return self.augment_on
        if self.preprocess.resize is not None and self.preprocess.crop is None:
            return "workers"
        trainer = self.trainer
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return "device" if on_gpu or self.hparams.num_workers == 0 else "workers"

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        self.augment_on = self.resolve_augment_on()
        self._ensure_mean()
        train_full = self._split("train", self._loader_transform(train=True))
        self.data_train = Subset(train_full, self._train_indices(dataset_size(train_full)))
        self.data_val, self.data_test = self._eval_splits(self._loader_transform(train=False))

    def _train_indices(self, n_train_full: int) -> list[int]:
        """The training images: indices into the full training split of ``n_train_full`` images."""
        return self._split_indices(n_train_full)[0]

    def _loader_transform(self, train: bool) -> v2.Compose:
        """What the loader workers do to each image: everything (``augment_on="workers"``), or decode and cut to
        the common size, the rest being done to whole batches on the device."""
        if self.augment_on == "workers":
            return paper_transform(self.preprocess, self.mean, train=train)
        self.batch_preprocessing = BatchPreprocessing(self.preprocess, self.mean)
        return pixels_transform(self.preprocess)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 batches on the device -> the network's inputs (``augment_on="device"``); Lightning calls it for
        every batch of fit, validate and test. Outside Lightning, call it on a loader's batches the same way.
        A lone tensor is the module's ``example_input_array`` (the model summary's): already network input."""
        if self.augment_on == "workers" or isinstance(batch, torch.Tensor):
            return batch
        assert self.batch_preprocessing is not None, "setup() makes it for augment_on=device"
        return self.batch_preprocessing(batch)

    def _eval_splits(self, transform) -> tuple[Dataset, Dataset]:
        """Validation and test sets with ``transform``: the same images in the same order whatever it is."""
        if self.has_val_split:
            val = self._subset(self._split("val", transform))
        else:
            train_full = self._split("train", transform)
            val = Subset(train_full, self._split_indices(dataset_size(train_full))[1])
        return val, self._subset(self._split("test", transform), seed_offset=2)

    def analysis_dataset(self, split: str = "val") -> Dataset:
        """The ``split`` ("val" or "test") as the analyses want it: one centre crop per image ``[C, H, W]``
        even when evaluation uses 10 crops; same images, same order."""
        one_of("split", split, ("val", "test"))
        if self.data_train is None:
            self.setup("fit")
        if not self.preprocess.ten_crop and self.augment_on == "workers":
            return self._made_split(split)
        if self._analysis_splits is None:
            single = paper_transform(dataclasses.replace(self.preprocess, ten_crop=False), self.mean, train=False)
            self._analysis_splits = self._eval_splits(single)
        return self._analysis_splits[0 if split == "val" else 1]
