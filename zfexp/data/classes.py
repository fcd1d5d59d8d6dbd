"""Keeping some classes of a dataset: pretraining on five Fashion-MNIST classes and transferring to the other
five, leaving out Caltech-256's clutter class."""

from __future__ import annotations

from collections.abc import Sequence, Sized

import torch
from torch.utils.data import Dataset

from zfexp.errors import InvalidValueError


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    """``label``'s name, or the number itself where no name is known (names of fewer classes than the network
    has outputs, none at all)."""
    return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)


def select_classes(names: Sequence[str], keep: Sequence[int | str] | None = None,
                   exclude: Sequence[int | str] = ()) -> list[int]:
    """Dataset labels of the classes kept: ``keep`` (all when ``None``) minus ``exclude``, both given as labels
    or class names, returned in the dataset's order."""

    def label(item: int | str, key: str) -> int:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
            return item
        if isinstance(item, str) and item in names:
            return list(names).index(item)
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise InvalidValueError(f"data.{key}: {item!r} is not a class of this dataset; valid: a label "
                                f"0..{len(names) - 1} or a name ({shown})")

    kept = set(range(len(names))) if keep is None else {label(c, "class_subset") for c in keep}
    kept -= {label(c, "exclude_classes") for c in exclude}
    if len(kept) < 2:
        raise InvalidValueError(f"data.class_subset={list(keep) if keep is not None else None}, "
                                f"data.exclude_classes={list(exclude)} keep {len(kept)} class(es); a classifier needs "
                                "at least 2")
    return sorted(kept)


def dataset_targets(dataset: Dataset) -> list[int]:
    """Every item's label without loading an image: torchvision's ``targets`` (MNIST, CIFAR, ImageFolder) or
    ``y`` (Caltech), through ``Subset`` and :class:`ClassSubset` wrappers."""
    from torch.utils.data import Subset

    if isinstance(dataset, ClassSubset):
        return list(dataset.labels)
    if isinstance(dataset, Subset):
        inner = dataset_targets(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    for attr in ("targets", "y"):
        targets = getattr(dataset, attr, None)
        if targets is not None:
            return targets.tolist() if isinstance(targets, torch.Tensor) else [int(t) for t in targets]
    raise TypeError(f"{type(dataset).__name__} has no 'targets' or 'y' list of labels; cannot select classes")


def dataset_size(dataset: Dataset) -> int:
    """``len(dataset)``, checked: every dataset of the datamodules has a length (torchvision's, ``Subset``,
    :class:`ClassSubset`), though torch's ``Dataset`` declares no ``__len__`` (an iterable-style one may have none)."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"{type(dataset).__name__} has no len(): the datamodules need datasets of known size")
    return len(dataset)


class ClassSubset(Dataset):
    """The items of ``dataset`` whose label is in ``kept``, relabelled by position in ``kept``.

    ``labels`` holds the new label of every item (so splits need not load images).
    """

    def __init__(self, dataset: Dataset, targets: Sequence[int], kept: Sequence[int]):
        self.dataset = dataset
        relabel = {old: new for new, old in enumerate(kept)}
        self.indices = [i for i, y in enumerate(targets) if y in relabel]
        self.labels = [relabel[targets[i]] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, _ = self.dataset[self.indices[index]]
        return image, self.labels[index]
