"""Seeded choices of dataset items: the training order with each image's augmentation seed, and the fixed
probe images the analyses look at.

None of them draws from the global random generators, so the numbers of a run do not depend on what else
drew random numbers before (a mean image computed rather than read from its cache, an analysis callback),
on the number of loader workers, or on whether the run was interrupted and resumed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from zfexp.errors import InvalidValueError

SEED_BITS = 62  # seeds stay positive int64 values, so ``seed + epoch`` never overflows a torch seed


def derived_seed(*parts: int) -> int:
    """A seed of ``SEED_BITS`` bits determined by ``parts`` alone (same value in every process and run)."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def private_generator(seed: int) -> torch.Generator:
    """A CPU generator of its own, e.g. for a DataLoader's worker base seed, which would otherwise be drawn
    from (and advance) the global generator every time the loader is iterated."""
    return torch.Generator().manual_seed(seed)


class SeededSampler(DistributedSampler):
    """The training order of one epoch and a random seed per image, both functions of ``(seed, epoch)`` only.

    Yields ``(index, sample_seed)`` pairs for :class:`SeededItems`: ``index`` walks a random permutation of the
    dataset (DistributedSampler's rule: ``torch.randperm`` seeded with ``seed + epoch``; this rank's share under
    DDP), cycled when ``epoch_size`` is larger than the dataset; ``sample_seed`` seeds that image's random
    transforms and is drawn per position in the epoch, so an image seen twice in an epoch is augmented twice.

    It keeps no state of its own: torchdata's ``StatefulDataLoader`` resumes an epoch by skipping the pairs it
    had already yielded, which are the same pairs again. Lightning calls ``set_epoch`` before each epoch, and
    leaves a ``DistributedSampler`` in place under DDP.

    Args:
        dataset_size: number of items of the dataset.
        seed: the run's data seed.
        epoch_size: items per epoch (all ranks together); ``None``: ``dataset_size``.
        num_replicas, rank: DDP world size and this process's rank.
    """

    def __init__(self, dataset_size: int, seed: int, epoch_size: int | None = None, num_replicas: int = 1,
                 rank: int = 0):
        if dataset_size <= 0:
            raise InvalidValueError(f"SeededSampler: the dataset is empty (dataset_size={dataset_size})")
        self.dataset_size = dataset_size
        self.epoch_size = epoch_size or dataset_size
        super().__init__(range(self.epoch_size), num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed % 2**SEED_BITS, drop_last=False)

    def epoch_items(self) -> tuple[list[int], list[int]]:
        """``(indices, sample_seeds)`` of this rank for the current epoch, each of length ``len(self)``."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        rounds = -(-self.epoch_size // self.dataset_size)
        order = torch.cat([torch.randperm(self.dataset_size, generator=g) for _ in range(rounds)])[: self.epoch_size]
        seeds = torch.randint(0, 2**SEED_BITS, (self.epoch_size,),
                              generator=torch.Generator().manual_seed(derived_seed(self.seed, self.epoch)))
        padding = self.total_size - self.epoch_size  # DistributedSampler's rule: repeat from the start
        if padding:
            repeat = -(-padding // self.epoch_size)
            order, seeds = order.repeat(repeat + 1)[: self.total_size], seeds.repeat(repeat + 1)[: self.total_size]
        mine = slice(self.rank, self.total_size, self.num_replicas)
        return order[mine].tolist(), seeds[mine].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(zip(*self.epoch_items())))


class SeededItems(Dataset):
    """``dataset`` indexed by ``(index, sample_seed)``: ``dataset[index]`` with torch's CPU generator seeded
    by ``sample_seed`` while its transforms run, and given back as it was afterwards (the loader may run in
    the training process). Random transforms must draw from torch's generator, as torchvision's do."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, sample_seed = key
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(sample_seed)
            return self.dataset[index]


def probe_indices(n_available: int, size: int, seed: int) -> torch.Tensor:
    """A fixed, seeded choice of ``size`` dataset indices (sorted)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_available, generator=g)[: min(size, n_available)].sort().values


def stack_dataset(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, C, H, W], labels [N])`` of ``dataset`` at ``indices``."""
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])
