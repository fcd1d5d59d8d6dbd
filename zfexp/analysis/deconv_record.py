"""The forward pass a deconvnet goes back down, along a chain of modules (ZFNet, AlexNet, VGG): the modules up to
a conv layer's ReLU, each recorded with what its inverse needs (input size, max-pool switches, where a ReLU was
active). Which layers may be projected at all, in any network: :func:`check_projectable`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from zfexp.analysis.geometry import forward_prefix
from zfexp.analysis.graph import is_plain_chain
from zfexp.analysis.network import eval_mode, invalid_layer
from zfexp.models.contrast_norm import LocalContrastNorm

PASS_THROUGH = (nn.LocalResponseNorm, LocalContrastNorm, nn.Dropout, nn.Dropout2d, nn.Identity)
# Batch norm in eval mode is a per-channel scale (and shift) going up, so a scale of the signal coming down: its
# true backward, as if folded into the filters of the conv before it.
INVERTIBLE = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d) + PASS_THROUGH

_M = TypeVar("_M", bound=nn.Module)


@dataclass
class RecordedStep:
    """One module of the forward prefix and what its inverse needs."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...] = ()
    switches: torch.Tensor | None = None  # [N, C, H_out, W_out] flat argmax indices into H_in * W_in
    active: torch.Tensor | None = None  # [N, C, H, W] bool: where a ReLU's output was positive (guided, gradient)

    def module_as(self, kind: type[_M]) -> _M:
        """The module, for a step known to be a ``kind`` (the projected conv, :func:`top_conv`; a max-pool)."""
        assert isinstance(self.module, kind), f"step {self.name!r}: {type(self.module).__name__}, not {kind.__name__}"
        return self.module

    def pool_switches(self) -> torch.Tensor:
        """``switches``, which :func:`record_forward` records at every max-pool."""
        assert self.switches is not None, f"step {self.name!r} has no switches: not a max-pool"
        return self.switches

    def relu_mask(self) -> torch.Tensor:
        """``active``, which :func:`record_forward` records at every ReLU with ``keep_active`` (for the rules that
        mask: guided, gradient)."""
        assert self.active is not None, f"step {self.name!r} has no mask: not a ReLU, or recorded without keep_active"
        return self.active


def check_projectable(model: nn.Module, layer: str, key: str | None = None) -> None:
    """``layer`` names a conv layer of ``model`` or a block (a module with children, a ResNet's ``layer3.1``):
    what the deconvnet projects. Else an :class:`InvalidValueError` naming the valid ones (and the config
    ``key`` that gave it)."""
    module = dict(model.named_modules()).get(layer) if layer else None
    if module is None or not (isinstance(module, nn.Conv2d) or list(module.children())):
        raise invalid_layer(model, layer, blocks=True, key=key)


def chain_prefix(model: nn.Module, layer: str, images: torch.Tensor) -> list[tuple[str, nn.Module]] | None:
    """The leaf modules up to conv ``layer``'s ReLU when the network is a chain of them up to there and every one
    is inverted here (:data:`INVERTIBLE`; a batch norm with running statistics, a conv with numeric padding and
    no groups); else ``None``: the network's own backward goes down (:mod:`~zfexp.analysis.deconv_graph`)."""
    if not is_plain_chain(model, layer, images, (nn.Conv2d,)):
        return None
    prefix = forward_prefix(model, layer)
    for _name, module in prefix:
        if not isinstance(module, INVERTIBLE):
            return None
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or isinstance(module.padding, str)):
            return None
        if isinstance(module, nn.BatchNorm2d) and module.running_var is None:
            return None  # normalised by the batch's own statistics in eval mode too: no fixed scale
    return prefix


def batch_norm_scale(norm: nn.BatchNorm2d) -> torch.Tensor:
    """``[C]``: what batch norm in eval mode multiplies each channel by (``weight / sqrt(running_var + eps)``).
    ``norm`` keeps running statistics (:func:`chain_prefix` lets no other batch norm in)."""
    assert norm.running_var is not None, "a batch norm without running statistics has no fixed scale"
    scale = torch.rsqrt(norm.running_var + norm.eps)
    return scale * norm.weight if norm.weight is not None else scale


@torch.no_grad()
def record_forward(prefix: list[tuple[str, nn.Module]], model: nn.Module, images: torch.Tensor, keep_active: bool,
                   ) -> tuple[torch.Tensor, list[RecordedStep]]:
    """Run ``images [N, C, H, W]`` through a :func:`chain_prefix` in eval mode (the model's mode is restored);
    return its output ``[N, C_l, H_l, W_l]`` and the steps. ``keep_active``: record each ReLU's mask."""
    steps: list[RecordedStep] = []
    x = images
    with eval_mode(model):
        for name, module in prefix:
            step = RecordedStep(name, module, tuple(x.shape))
            if isinstance(module, nn.MaxPool2d):
                x, step.switches = F.max_pool2d(x, module.kernel_size, module.stride, module.padding,
                                                module.dilation, ceil_mode=module.ceil_mode, return_indices=True)
            elif isinstance(module, nn.ReLU):
                x = F.relu(x)  # never in place: x may be the caller's tensor
                if keep_active:
                    step.active = x > 0
            else:
                x = module(x)
            steps.append(step)
    return x, steps


def scale_above_conv(steps: list[RecordedStep]) -> torch.Tensor:
    """``[C_l]``: what the batch norms between the projected conv and its ReLU (VGG-BN's) multiply each map by:
    the kept activations go down to the conv scaled by it (ones where there is none)."""
    top = top_conv(steps)
    conv = steps[top].module_as(nn.Conv2d)
    scale = torch.ones(conv.out_channels, device=conv.weight.device)
    for step in steps[top + 1:]:
        if isinstance(step.module, nn.BatchNorm2d):
            scale = scale * batch_norm_scale(step.module)
    return scale


def top_conv(steps: list[RecordedStep]) -> int:
    """Index of the projected layer's conv among ``steps``."""
    return next(i for i in range(len(steps) - 1, -1, -1) if isinstance(steps[i].module, nn.Conv2d))
