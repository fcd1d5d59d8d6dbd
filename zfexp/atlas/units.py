"""The atlas's numbers: for every map of every chosen layer, its top-k units over a dataset (one pass for all
layers, each layer's result cached), then those units projected to pixels by the deconvnet and cropped with the
image patch each sees, a chunk of maps at a time so that memory stays bounded whatever the layer."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from zfexp.analysis.top_k import TopActivationsResult, top_activations_by_layer
from zfexp.analysis.unit_crops import top_k_tiles
from zfexp.data.classes import dataset_size, dataset_targets
from zfexp.data.files import write_atomic
from zfexp.data.sampling import probe_indices
from zfexp.errors import InvalidValueError

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # raised when the top-k pass changes what it finds: older cache files are then not read
CHUNK_BYTES = 1 << 28  # the projections and crops of one chunk of maps: 256 MiB of float32 at most


@dataclass
class UnitChunk:
    """Consecutive maps of one layer, the ``first``-th and on in the layer's map order: ``top`` (their
    ``channels [M]``; ``values, indices [M, k]``, ``positions [M, k, 2]``), ``projections [M, k, C, s, s]`` (each
    unit's deconvnet projection cropped to its receptive field), ``crops [M, k, C, s, s]`` (the image patch it
    sees, as shown: pixels in [0, 1]), ``predicted [M, k]`` (the network's class for each image), ``labels
    [M, k]`` (the images' true classes; ``None`` for unlabelled images) and ``filters [M, C, kh, kw]`` (the
    conv's weights, for the network's first conv only)."""

    layer: str
    first: int
    top: TopActivationsResult
    projections: torch.Tensor
    crops: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor | None
    filters: torch.Tensor | None

    @property
    def maps(self) -> int:
        return int(self.top.channels.numel())


@dataclass
class AtlasLayer:
    """The numbers of one layer's atlas (no pictures): ``top`` of all its ``K`` maps, ``predicted`` and
    ``labels`` ``[K, k]``, the side of its crops (``tile``, pixels) and whether its filters are shown."""

    name: str
    top: TopActivationsResult
    predicted: torch.Tensor
    labels: torch.Tensor | None
    tile: int
    filters: bool

    @property
    def maps(self) -> int:
        return int(self.top.channels.numel())


def check_layer_list(key: str, layers: Any) -> None:
    """``layers`` is ``None`` (the defaults) or a non-empty list of distinct layer names."""
    if layers is None:
        return
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not all(isinstance(x, str) for x in layers):
        raise InvalidValueError(f"{key}={layers!r}: give a list of layer names ([conv1,conv5], [layer1.0.conv1]) or "
                                "null for the layers zfexp.analyze draws")
    if not layers or len(set(layers)) != len(layers):
        raise InvalidValueError(f"{key}={list(layers)}: give at least one layer, each once")


def sample_images(dataset: Dataset, max_images: int | None, seed: int) -> Dataset:
    """``max_images`` of ``dataset`` chosen at random with ``seed`` (in dataset order), or all of it: an
    ImageFolder split sorted by class keeps every class."""
    size = dataset_size(dataset)
    if max_images is None or max_images >= size:
        return dataset
    return Subset(dataset, probe_indices(size, max_images, seed).tolist())


def fingerprint(net: nn.Module, dataset: Dataset, described: str, k: int) -> str:
    """The key of a top-k pass: :data:`CACHE_VERSION`, the network's every weight, the images (``described``:
    where they come from and how they are preprocessed; their files with sizes and times, the indices of a
    subset, their labels, their first and last images) and ``k``. The same key means the same top-k."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"v{CACHE_VERSION}|{described}|{k}".encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(_dataset_identity(dataset).encode())
    size = dataset_size(dataset)
    for index in (0, size - 1):
        digest.update(dataset[index][0].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _dataset_identity(dataset: Dataset) -> str:
    """What says which images a dataset holds, without decoding one: its size, a subset's indices, the files
    (names, sizes, modification times) of a folder or an ImageFolder, its labels."""
    parts = [type(dataset).__name__, str(dataset_size(dataset))]
    if isinstance(dataset, Subset):
        parts += [str(list(dataset.indices)), _dataset_identity(dataset.dataset)]
    files = getattr(dataset, "files", None) or [path for path, _ in getattr(dataset, "samples", [])]
    for path in files:
        stat = os.stat(path)
        parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    try:
        parts.append(str(dataset_targets(dataset)))
    except TypeError:  # a dataset without a list of labels
        pass
    return "|".join(parts)


def cache_file(cache_dir: Path, key: str, k: int, layer: str) -> Path:
    """Where one layer's top-k of a pass keyed ``key`` is kept."""
    return cache_dir / f"top{k}_{key}_{layer}.pt"


def top_k_every_map(net: nn.Module, dataset: Dataset, layers: Sequence[str], k: int, device: torch.device,
                    batch_size: int = 256, num_workers: int = 0, cache_dir: Path | None = None,
                    key: str | None = None) -> dict[str, TopActivationsResult]:
    """The top-``k`` units of every map of ``layers`` over ``dataset``, from one pass for the layers not in
    ``cache_dir`` under ``key`` (each layer in a file of its own, written after the pass)."""
    cached = {layer: cache_file(cache_dir, key, k, layer) for layer in layers} if cache_dir and key else {}
    found = {layer: result for layer, path in cached.items() if (result := _read_cached(path)) is not None}
    if found:
        log.info("atlas: the top-%d of every map of %s read from %s", k, ", ".join(found), cache_dir)
    missing = [layer for layer in layers if layer not in found]
    if missing:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        found.update(top_activations_by_layer(net, loader, dict.fromkeys(missing), k=k, device=device))
        for layer in missing:
            if layer in cached:
                write_atomic(cached[layer], functools.partial(_save, vars(found[layer])))
    return {layer: found[layer] for layer in layers}


def _read_cached(path: Path) -> TopActivationsResult | None:
    """A layer's cached top-k (read with ``weights_only=True``), or ``None`` where there is none or the file
    cannot be read (a cache is only a shortcut: the pass computes it again and the file is rewritten)."""
    if not path.is_file():
        return None
    try:
        return TopActivationsResult(**torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # truncated, not ours, or from an older layout
        log.warning("atlas: %s cannot be read (%s: %s); its layer's top-k is computed again", path,
                    type(err).__name__, err)
        return None


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    torch.save(tensors, path)


def maps_per_chunk(k: int, image_shape: Sequence[int], tile: int, budget: int = CHUNK_BYTES) -> int:
    """How many maps' projections and crops (``2 * k`` tiles of ``C x tile x tile`` float32 each) fit in
    ``budget`` bytes; at least one."""
    return max(1, budget // (2 * k * image_shape[0] * tile * tile * 4))


def layer_chunks(net: nn.Module, dataset: Dataset, layer: str, top: TopActivationsResult, device: torch.device,
                 shown, labelled: bool, show_filters: bool, chunk: int) -> Iterator[UnitChunk]:
    """The units of ``top`` (every map of ``layer``), ``chunk`` maps at a time: projected and cropped
    (:func:`~zfexp.analysis.unit_crops.top_k_tiles`), with their predictions, labels (``labelled``) and, for
    ``show_filters``, the conv's filters. ``shown`` turns model inputs into pixels in [0, 1]."""
    maps = int(top.channels.numel())
    weight = net.get_submodule(layer).weight if show_filters else None
    for first in range(0, maps, chunk):
        part = TopActivationsResult(**{name: value[first:first + chunk] for name, value in vars(top).items()})
        projections, crops, predicted = top_k_tiles(net, dataset, layer, part, device, shown=shown)
        labels = unit_labels(dataset, part.indices) if labelled else None
        filters = weight.detach().cpu()[part.channels] if isinstance(weight, torch.Tensor) else None
        yield UnitChunk(layer, first, part, projections, crops, predicted, labels, filters)


def unit_labels(dataset: Dataset, indices: torch.Tensor) -> torch.Tensor:
    """The labels of the images ``indices [...]`` of ``dataset``: from its list of labels where it has one (no
    image decoded), else read item by item."""
    try:
        targets = torch.as_tensor(dataset_targets(dataset))
    except TypeError:  # a dataset without a list of labels (a TensorDataset)
        return torch.tensor([int(dataset[i][1]) for i in indices.flatten().tolist()]).view_as(indices)
    return targets[indices]
