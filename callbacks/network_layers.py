"""The network an analysis callback looks at, and the layers it analyses: the configured ones checked before
training, or the network's own defaults; eval mode without autograd while it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import lightning as L
import torch
from torch import nn

from zfexp.analysis.activations import check_feature_layers, eval_mode
from zfexp.analysis.deconv_record import check_projectable
from zfexp.errors import InvalidValueError
from zfexp.models.external import default_conv_layers


def network_of(pl_module: L.LightningModule) -> nn.Module:
    """The wrapped network (``pl_module.net``) whose layers carry the paper's names, else the module itself."""
    return getattr(pl_module, "net", pl_module)


def check_layers(key: str, model: nn.Module, layers: Sequence[str]) -> None:
    for layer in layers:
        try:
            check_projectable(model, layer)
        except ValueError as err:
            raise InvalidValueError(f"{key}: {err}") from err


def layers_or_defaults(key: str, model: nn.Module, layers: Sequence[str] | None,
                       default: Callable[[nn.Module], list[str]] = default_conv_layers,
                       projected: bool = True) -> list[str]:
    """``layers`` as configured, or for ``None`` the network's own: ``default(model)``, by default the paper's
    conv1..conv5 when it has them, else five of its convs spread over its depth (``layer1.0.conv1`` ... in a
    ResNet). Checked before training: each one projectable to pixels (``projected``) or giving features."""
    chosen = list(layers) if layers is not None else default(model)
    if projected:
        check_layers(key, model, chosen)
    else:
        try:
            check_feature_layers(model, chosen)
        except ValueError as err:
            raise InvalidValueError(f"{key}: {err}") from err
    return chosen


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for the duration; the previous mode is restored."""
    with eval_mode(model), torch.no_grad():
        yield model
