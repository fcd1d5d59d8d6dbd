"""The datamodule's loaders: the training order and every random crop and flip drawn from the data seed (kept in
checkpoints with the mean image), a training loader that resumes mid-epoch, and evaluation sets shared between
DDP ranks with every image once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from zfexp.data.batch_preprocessing import WithCrops
from zfexp.data.classes import dataset_size
from zfexp.data.sampling import (
    SEED_BITS,
    EvaluationShards,
    ResumableLoader,
    SeededItems,
    SeededSampler,
    private_generator,
)
from zfexp.data.transforms import Preprocessing

# To the type checker the mixin is the LightningDataModule it is mixed into (whose trainer, hparams and state_dict
# it uses); at runtime a plain class, ahead of LightningDataModule in the datamodule's bases.
if TYPE_CHECKING:
    from lightning import LightningDataModule as _DataModule
    from lightning.fabric.utilities.data import AttributeDict
else:
    _DataModule = object


class SeededLoaders(_DataModule):
    """The loaders of :class:`~zfexp.data.base.ImageClassificationDataModule` (mixed into it; they read its
    ``hparams``, ``trainer``, ``augment_on``, ``preprocess``, ``data_*`` splits, ``mean`` and ``seed``), and the
    state it keeps in checkpoints."""

    # The datamodule's attributes they read (the splits are None until its setup()).
    augment_on: str
    preprocess: Preprocessing
    seed: int | None
    data_train: Subset | None
    data_val: Dataset | None
    data_test: Dataset | None
    if TYPE_CHECKING:  # for the type checker only: at runtime LightningDataModule's property
        hparams: AttributeDict  # which save_hyperparameters() fills with one

    def _loader_options(self) -> dict[str, Any]:
        workers = self.hparams.num_workers
        # A generator of the loader's own: each iteration draws the workers' base seed from it, not from (and
        # advancing) the global generator that dropout and weight initialisation use.
        return dict(batch_size=self.hparams.batch_size, num_workers=workers, persistent_workers=workers > 0,
                    pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
                    generator=private_generator(self.data_seed))

    @property
    def data_seed(self) -> int:
        """The seed of the training order and augmentations: the process's torch seed (the run's ``seed``)
        when first asked, or the one restored from a checkpoint."""
        if self.seed is None:
            self.seed = torch.initial_seed() % 2**SEED_BITS
        return self.seed

    def train_epoch_size(self) -> int | None:
        """Images per training epoch; ``None``: one pass over the training set."""
        return None

    def train_sampler(self) -> SeededSampler:
        """This rank's training order and the images' seeds (:class:`SeededSampler`)."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = SeededSampler(dataset_size(self._made_split("train")), self.data_seed,
                                epoch_size=self.train_epoch_size(), num_replicas=world, rank=rank)
        if trainer is not None:
            # The epoch Lightning passes to set_epoch before each epoch; a resumed run makes its first iterator
            # (the one that skips to the checkpoint's position) before that call, so it is set here already.
            # Lightning annotates the tracker as its base class, which has no "processed"; the fit loop's has.
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)  # type: ignore[attr-defined]
        return sampler

    def evaluation_sampler(self, dataset: Dataset) -> EvaluationShards:
        """This rank's share of an evaluation set, every image once (:class:`EvaluationShards`)."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return EvaluationShards(dataset_size(dataset), world, rank)

    def _made_split(self, split: str) -> Dataset:
        """The ``split`` ("train", "val" or "test") that ``setup()`` made: Lightning calls it before it asks for
        the loaders."""
        dataset = {"train": self.data_train, "val": self.data_val, "test": self.data_test}[split]
        assert dataset is not None, f"no {split} split before the datamodule's setup()"
        return dataset

    def train_dataloader(self) -> ResumableLoader:
        train = self._made_split("train")
        items = train if self.augment_on == "workers" else WithCrops(train, self.preprocess)
        return ResumableLoader(SeededItems(items), sampler=self.train_sampler(), **self._loader_options())

    def state_dict(self) -> dict[str, Any]:
        """The data seed goes into every checkpoint: a resumed run continues the interrupted run's order and
        augmentations."""
        return {**super().state_dict(), "data_seed": self.data_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("data_seed") is not None:
            self.seed = int(state_dict["data_seed"])

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self._made_split("val"))

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self._made_split("test"))

    def _evaluation_loader(self, dataset: Dataset) -> DataLoader:
        """In order; under DDP each rank's share of it, every image once (a ``DistributedSampler``, which
        Lightning leaves in place rather than pad the set with repeated images)."""
        return DataLoader(dataset, sampler=self.evaluation_sampler(dataset), **self._loader_options())
