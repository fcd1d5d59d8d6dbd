"""The network an analysis callback looks at, and the layers it analyses: the configured ones checked before
training, or the network's own defaults; eval mode without autograd while it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import lightning as L
import torch
from torch import nn

from zfexp.analysis.layer_choice import ImageShape, check_drawn_layers, check_read_layers, default_conv_layers
from zfexp.analysis.network import eval_mode


def network_of(pl_module: L.LightningModule) -> nn.Module:
    """The wrapped network (``pl_module.net``) whose layers carry the paper's names, else the module itself."""
    return getattr(pl_module, "net", pl_module)


def image_shape_of(pl_module: L.LightningModule) -> ImageShape:
    """``(channels, height, width)`` of the images the module takes: its ``example_input_array``, else its
    ``in_channels`` and ``input_size`` hyperparameters (ImageNet's 3 x 224 x 224 where it has neither)."""
    example = getattr(pl_module, "example_input_array", None)
    if isinstance(example, torch.Tensor) and example.dim() == 4:
        _, channels, height, width = example.shape
        return channels, height, width
    hparams = getattr(pl_module, "hparams", {})
    size = int(hparams.get("input_size", 224))
    return int(hparams.get("in_channels", 3)), size, size


def layers_or_defaults(key: str, pl_module: L.LightningModule, layers: Sequence[str] | None,
                       default: Callable[[nn.Module, ImageShape], list[str]] = default_conv_layers,
                       projected: bool = True) -> list[str]:
    """``layers`` as configured, or for ``None`` the network's own: ``default(net, image_shape)``, by default the
    paper's conv1..conv5 when it has them, else five of its convs spread over its depth (``layer1.0.conv1`` ...
    in a ResNet). Checked before training on the module's images: each one drawn (``projected``: it runs and
    has a receptive field) or read (its features exist)."""
    net, image_shape = network_of(pl_module), image_shape_of(pl_module)
    chosen = list(layers) if layers is not None else default(net, image_shape)
    check = check_drawn_layers if projected else check_read_layers
    check(key, net, chosen, image_shape)
    return chosen


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for the duration; the previous mode is restored."""
    with eval_mode(model), torch.no_grad():
        yield model
