"""Which feature maps a figure shows: a seeded random choice per layer, the same wherever it is drawn."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import nn

from zfexp.errors import InvalidValueError


def random_maps(net: nn.Module, layer: str, count: int, seed: int) -> list[int]:
    """``count`` feature maps of ``layer`` chosen at random, sorted. The draw depends on ``seed`` and the layer's
    name only, so the same seed picks the same maps of a layer wherever it is drawn (every callback, ``analyze``),
    whatever other layers are drawn beside it."""
    g = torch.Generator().manual_seed(seed + zlib.crc32(layer.encode()))
    maps = net.get_submodule(layer).out_channels  # a conv's, or a block's that names its own
    if not isinstance(maps, int):  # a module attribute is typed Tensor | Module
        raise InvalidValueError(f"layer={layer!r}: its out_channels is {type(maps).__name__}, not a number of maps")
    return torch.randperm(maps, generator=g)[:count].sort().values.tolist()


def chosen_maps(net: nn.Module, layers: Sequence[str], count: int, seed: int) -> dict[str, list[int]]:
    """``{layer: random_maps(net, layer, count, seed)}`` for each of ``layers``."""
    return {layer: random_maps(net, layer, count, seed) for layer in layers}
