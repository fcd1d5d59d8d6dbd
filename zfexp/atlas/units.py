"""The atlas's numbers: for every map of every chosen layer, its top-k units over a dataset (one pass for all
layers, cached), each projected to pixels by the deconvnet and cropped with the image patch it sees."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zfexp.analysis.activations import layer_activations
from zfexp.analysis.top_k import TopActivationsResult, top_activations_by_layer
from zfexp.analysis.unit_crops import top_k_tiles
from zfexp.data.classes import dataset_size, dataset_targets
from zfexp.data.files import write_atomic
from zfexp.runs.progress import progress

log = logging.getLogger(__name__)


@dataclass
class AtlasLayer:
    """Every map of one layer: ``top`` (all ``K`` maps; ``values, indices [K, k]``, ``positions [K, k, 2]``),
    ``projections [K, k, C, s, s]`` (each unit's deconvnet projection, cropped to its receptive field) and
    ``crops [K, k, C, s, s]`` (the image patch it sees, as shown: pixels in [0, 1]), ``predicted [K, k]`` (the
    network's class for each image), ``labels [K, k]`` (the images' true classes; ``None`` for unlabelled
    images) and ``filters [K, C, kh, kw]`` (the conv's weights, for the network's first conv only)."""

    name: str
    top: TopActivationsResult
    projections: torch.Tensor
    crops: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor | None
    filters: torch.Tensor | None

    @property
    def maps(self) -> int:
        return int(self.top.channels.numel())


def map_counts(net: nn.Module, layers: Sequence[str], image: torch.Tensor) -> dict[str, int]:
    """How many maps each of ``layers`` has, from one forward of ``image [C, H, W]``."""
    weight = next(net.parameters())
    outputs = layer_activations(net, image[None].to(weight.device, weight.dtype), list(layers))
    return {layer: int(outputs[layer].shape[1]) for layer in layers}


def fingerprint(net: nn.Module, dataset: Dataset, described: str, layers: Sequence[str], k: int) -> str:
    """A key for the top-k pass: the network's every weight, the dataset (its description, size, and first and
    last images), the layers and ``k``. The same key means the same top-k, whoever asks."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    size = dataset_size(dataset)
    digest.update(f"{described}|{size}|{list(layers)}|{k}".encode())
    for index in (0, size - 1):
        digest.update(dataset[index][0].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def top_k_every_map(net: nn.Module, dataset: Dataset, layers: Sequence[str], k: int, device: torch.device,
                    batch_size: int = 256, cache: Path | None = None) -> dict[str, TopActivationsResult]:
    """The top-``k`` units of every map of ``layers`` over ``dataset``, from one pass (every layer at once);
    with ``cache`` (a file), read from it when it exists and written to it otherwise."""
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        log.info("atlas: the top-%d of every map read from %s", k, cache)
        return {layer: TopActivationsResult(**saved[layer]) for layer in layers}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    top = top_activations_by_layer(net, loader, dict.fromkeys(layers), k=k, device=device)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tensors = {layer: vars(result) for layer, result in top.items()}
        write_atomic(cache, lambda path: torch.save(tensors, path))
    return top


def unit_labels(dataset: Dataset, indices: torch.Tensor) -> torch.Tensor:
    """The labels of the images ``indices [...]`` of ``dataset``: from its list of labels where it has one (no
    image decoded), else read item by item."""
    try:
        targets = torch.as_tensor(dataset_targets(dataset))
    except TypeError:  # a dataset without a list of labels (a TensorDataset)
        return torch.tensor([int(dataset[i][1]) for i in indices.flatten().tolist()]).view_as(indices)
    return targets[indices]


def atlas_layers(net: nn.Module, dataset: Dataset, layers: Sequence[str], k: int, device: torch.device,
                 shown: Callable[[torch.Tensor], torch.Tensor], labelled: bool, batch_size: int = 256,
                 cache: Path | None = None) -> list[AtlasLayer]:
    """Every map of each of ``layers``: its top-``k`` units over ``dataset`` (``dataset[i] = (image [C, H, W],
    label)``; ``labelled``: the labels are true classes) projected and cropped. ``shown`` turns model inputs
    into pixels in [0, 1] (:class:`~zfexp.recipes.Inputs`)."""
    top = top_k_every_map(net, dataset, layers, k, device, batch_size, cache)
    first_conv = next((name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    result = []
    for layer in progress(layers, len(layers), f"atlas: projecting the top-{k} of every map", unit="layer"):
        projections, crops, predicted = top_k_tiles(net, dataset, layer, top[layer], device, shown=shown)
        module = net.get_submodule(layer)
        filters = module.weight.detach().cpu() if layer == first_conv and isinstance(module, nn.Conv2d) else None
        labels = unit_labels(dataset, top[layer].indices) if labelled else None
        result.append(AtlasLayer(layer, top[layer], projections, crops, predicted, labels, filters))
    return result
