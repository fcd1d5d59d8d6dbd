"""How a state_dict differs from a network's: the words an error gives when a weights file belongs to another
network (its first missing and unexpected keys, and the tensors whose shapes differ)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def mismatch(net: nn.Module, state: Mapping) -> str | None:
    """``None`` when ``state`` fits ``net`` key for key and shape for shape; else what differs, e.g. ``missing
    fc.weight, ...; unexpected layer1.0.conv3.weight, ...; shapes differ: conv1.weight [64, 3, 7, 7] in the
    file, [64, 1, 7, 7] in the network``."""
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shapes differ (" + ", ".join(
            f"{k} {list(theirs)} in the file, {list(ours)} in the network" for k, theirs, ours in shapes[:3])
            + (", ..." if len(shapes) > 3 else "") + ")")
    return "; ".join(parts) or None


def _first(keys: list[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")
