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
from torchdata.stateful_dataloader import StatefulDataLoader

from zfexp.errors import CheckpointError, InvalidValueError

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

    Its only state is where a resumed epoch starts (:meth:`resume_at`): :class:`ResumableLoader` resumes an
    epoch by skipping the pairs it had already yielded, which are the same pairs again. Lightning calls
    ``set_epoch`` before each epoch, and leaves a ``DistributedSampler`` in place under DDP.

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
        # DistributedSampler only takes the length of its dataset, though torch annotates it as a Dataset.
        super().__init__(range(self.epoch_size), num_replicas=num_replicas, rank=rank,  # type: ignore[arg-type]
                         shuffle=True, seed=seed % 2**SEED_BITS, drop_last=False)
        self.start = 0  # the position in the epoch the current iteration began at
        self._resumed: tuple[int, int] | None = None  # (epoch, position) of a resumed epoch

    def resume_at(self, position: int) -> None:
        """The current epoch's iterations begin at ``position`` of its pairs (a resumed epoch); other epochs at 0.
        Keyed by the epoch, as a loader may start an iteration more than once before it is consumed."""
        self._resumed = (self.epoch, position)

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
        self.start = self._resumed[1] if self._resumed is not None and self._resumed[0] == self.epoch else 0
        return iter(list(zip(*self.epoch_items(), strict=True))[self.start:])


class EvaluationShards(DistributedSampler):
    """This rank's share of an evaluation set under DDP: every ``num_replicas``-th image from the ``rank``-th, in
    order, none repeated. ``DistributedSampler`` pads the set to a multiple of the world size with repeated
    images, which the error would count twice (ImageNet's 50,000 on 3, 6 or 7 GPUs); the shares here differ by
    at most one image, and the metrics sum every rank's counts."""

    def __init__(self, dataset_size: int, num_replicas: int, rank: int):
        # As in SeededSampler: DistributedSampler only takes the range's length.
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank,  # type: ignore[arg-type]
                         shuffle=False)
        self.indices = range(rank, dataset_size, num_replicas)
        self.num_samples = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def batches_yielded(state: dict[str, Any]) -> tuple[int, bool]:
    """``(batches yielded in the epoch, whether the epoch's iteration had ended)`` from the state of a
    ``StatefulDataLoader`` with or without worker processes (the two kinds of state torchdata writes)."""
    if "_snapshot" in state:  # worker processes: the last snapshot and the steps since
        count = state["_snapshot"]["_snapshot_step"] + state["_steps_since_snapshot"]
    else:
        count = state.get("_num_yielded", 0)
    return int(count), bool(state.get("_iterator_finished", False))


def position_state(sampler: SeededSampler, batch_size: int, done: int, finished: bool) -> dict[str, Any]:
    """A training loader's state: its position in the epoch, ``done`` batches into this iteration (which began
    at ``sampler.start``), whether the epoch's iteration has ended, and the number of processes sharing it."""
    return {"batches": sampler.start // batch_size + done, "finished": finished, "processes": sampler.num_replicas}


def resume_from(sampler: SeededSampler, batch_size: int, state: dict[str, Any]) -> None:
    """Have ``sampler`` start its current epoch where a loader's ``state`` left it: ours (:func:`position_state`)
    or torchdata's own (older checkpoints). A position in the middle of an epoch is each process's: with another
    number of processes it would train part of the epoch twice and skip the rest, so that is refused."""
    done, finished = (state["batches"], state["finished"]) if "batches" in state else batches_yielded(state)
    if not done or finished:
        return
    processes = state.get("processes", sampler.num_replicas)
    if processes != sampler.num_replicas:
        raise CheckpointError(f"ckpt_path: the checkpoint was written in the middle of an epoch by {processes} "
                              f"training processes, and this run has {sampler.num_replicas}; resume it with as many "
                              "(trainer.devices, trainer.num_nodes), or resume from the epoch's end (the run's "
                              "last.ckpt) with any number")
    sampler.resume_at(done * batch_size)


class ResumableLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader`` over a :class:`SeededSampler`, whose state is its position in the epoch
    alone: ``{"batches": n, "finished": bool}``.

    The order and every augmentation are functions of the seed, the epoch and the position (not of the loader
    processes), so the position is all there is to resume, and a run resumes with any ``data.num_workers``,
    whatever the killed run had (torchdata's own state differs with and without worker processes and cannot be
    loaded across). States written by torchdata itself (older checkpoints) are read too."""

    def state_dict(self) -> dict[str, Any]:
        return position_state(self.sampler, self.batch_size, *batches_yielded(super().state_dict()))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({})  # a fresh iteration, which the sampler starts where the state was (the
        # datamodule set the sampler to the epoch being resumed before Lightning calls this)
        resume_from(self.sampler, self.batch_size, state_dict)


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
