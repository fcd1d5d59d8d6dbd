"""Layer geometry of a conv net, from its modules: which leaf modules lead up to a layer, and which input pixels
one unit sees (its receptive field) or one change reaches (its footprint), through convs and max-pools.

Shared by the deconvnet (a unit's window on the way down), occlusion (a square's footprint on the way up) and
the pictures (a unit's box in the image). Sizes are ``(height, width)`` pairs; window offsets are per-item
tensors ``(rows [B], cols [B])``, so one call moves a whole batch of windows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from zfexp.analysis.graph import features_end, is_plain_chain
from zfexp.analysis.network import invalid_layer, leaf_modules
from zfexp.analysis.receptive_field import field_geometry
from zfexp.errors import InvalidValueError

SPATIAL = (nn.Conv2d, nn.MaxPool2d)  # the modules that change where a unit looks; everything else is pointwise


class Geometry(NamedTuple):
    """A conv's or a max-pool's ``(height, width)`` kernel, stride, padding and dilation."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


def pair(value) -> tuple[int, int]:
    """``3`` -> ``(3, 3)``; a pair stays as it is."""
    return (value, value) if isinstance(value, int) else tuple(value)


def geometry(module: nn.Conv2d | nn.MaxPool2d) -> Geometry:
    """The module's geometry; a max-pool's stride defaults to its kernel, as in PyTorch."""
    if isinstance(module.padding, str):
        raise InvalidValueError(f"padding={module.padding!r} in {type(module).__name__}: only numeric padding has "
                                "a fixed geometry; give the padding in pixels")
    stride = module.stride if module.stride is not None else module.kernel_size
    return Geometry(pair(module.kernel_size), pair(stride), pair(module.padding), pair(module.dilation))


def forward_prefix(model: nn.Module, layer: str) -> list[tuple[str, nn.Module]]:
    """The leaf modules from the input up to conv ``layer``'s ReLU, in forward order.

    ``layer`` names a ``Conv2d`` (``"conv3"`` for ZFNet, ``"features.8"`` for torchvision's AlexNet); the
    prefix ends with the ReLU that follows it (after its batch norm, in VGG-BN), so what it computes is
    post-ReLU."""
    leaves = leaf_modules(model)
    names = [name for name, _ in leaves]
    if layer not in names or not isinstance(leaves[names.index(layer)][1], nn.Conv2d):
        raise invalid_layer(model, layer)
    return leaves[: features_end(leaves, names.index(layer)) + 1]


def input_window(module: nn.Conv2d | nn.MaxPool2d, lo, size: tuple[int, int]):
    """The window of ``module``'s input that its output window (offsets ``lo``, one ``size``) is computed from,
    padding included: ``(offsets, size)``. Offsets may be negative (the padding) and are tensors or ints."""
    g = geometry(module)
    in_lo = tuple(lo[d] * g.stride[d] - g.padding[d] for d in range(2))
    in_size = tuple((size[d] - 1) * g.stride[d] + g.dilation[d] * (g.kernel[d] - 1) + 1 for d in range(2))
    return in_lo, in_size


def footprint(module: nn.Conv2d | nn.MaxPool2d, lo, size: tuple[int, int], out_hw: tuple[int, int]):
    """The window of ``module``'s output that a change inside its input window (offsets ``lo = (rows [B],
    cols [B])``, one ``size``) reaches: per-item offsets and one size for all, kept inside the output map."""
    g = geometry(module)
    out_lo, out_size = [], []
    for d in range(2):
        reach = g.dilation[d] * (g.kernel[d] - 1)
        first = torch.div(lo[d] + g.padding[d] - reach + g.stride[d] - 1, g.stride[d], rounding_mode="floor")
        last = torch.div(lo[d] + size[d] - 1 + g.padding[d], g.stride[d], rounding_mode="floor")
        first, last = first.clamp_min(0), last.clamp_max(out_hw[d] - 1)
        count = min(max(int((last - first).max()) + 1, 1), out_hw[d])
        out_lo.append(torch.minimum(first, torch.full_like(first, out_hw[d] - count)))
        out_size.append(count)
    return tuple(out_lo), tuple(out_size)


def unit_windows(modules: list[nn.Module]) -> list[tuple[int, int]]:
    """For a chain of modules ending with a conv (and maybe its ReLU), per module the ``(h, w)`` of its input that
    one unit at the end can reach: that unit's receptive field at that depth, unclipped. ``(1, 1)`` above the
    last conv."""
    top = max(i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d))
    sizes = [(1, 1)] * len(modules)
    size = (1, 1)
    for i in range(top, -1, -1):
        module = modules[i]
        if isinstance(module, SPATIAL):
            _, size = input_window(module, (0, 0), size)
        sizes[i] = size
    return sizes


def receptive_field(model: nn.Module, layer: str, position: tuple[int, int], image_size: tuple[int, int] | int,
                    ) -> tuple[int, int, int, int]:
    """Input-pixel box ``(top, left, bottom, right)`` (inclusive, clipped to the image) seen by the unit at
    ``position = (row, col)`` of ``layer``'s output: a conv's, or any block's of a network that is not a chain
    of modules (a ResNet's: from the graph, :func:`~zfexp.analysis.receptive_field.field_geometry`)."""
    height, width = pair(image_size)
    if not _is_chain(model, layer, (height, width)):
        return field_geometry(model, layer, _in_channels(model), (height, width)).box(position, (height, width))
    lo, size = tuple(position), (1, 1)
    for _name, module in reversed(forward_prefix(model, layer)):
        if isinstance(module, SPATIAL):
            lo, size = input_window(module, lo, size)
    return max(lo[0], 0), max(lo[1], 0), min(lo[0] + size[0] - 1, height - 1), min(lo[1] + size[1] - 1, width - 1)


def receptive_field_size(model: nn.Module, layer: str, image_size: tuple[int, int] | int = 64) -> int:
    """Side of the (unclipped) input box one unit of ``layer`` sees: ``1 + sum (k - 1) * dilation * jump`` along
    a chain of modules; from the graph otherwise (the image's side where one unit sees more than twice it).
    ``image_size``: the images the network takes."""
    if _is_chain(model, layer, pair(image_size)):
        modules = [m for _, m in forward_prefix(model, layer)]
        return unit_windows(modules)[0][0]
    return field_geometry(model, layer, _in_channels(model), pair(image_size)).size[0]


def _in_channels(model: nn.Module) -> int:
    return next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def _is_chain(model: nn.Module, layer: str, size: tuple[int, int]) -> bool:
    weight = next(model.parameters())
    side = (min(size[0], 256), min(size[1], 256))  # whether the modules form a chain does not depend on the size
    probe = torch.zeros(1, _in_channels(model), *side, device=weight.device, dtype=weight.dtype)
    return is_plain_chain(model, layer, probe, (nn.Conv2d,))
