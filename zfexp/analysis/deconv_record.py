"""The forward pass a deconvnet goes back down: the modules up to a conv layer's ReLU, each recorded with what
its inverse needs (input size, max-pool switches, where a ReLU was active)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from zfexp.analysis.activations import eval_mode
from zfexp.analysis.geometry import forward_prefix
from zfexp.errors import InvalidValueError
from zfexp.models.contrast_norm import LocalContrastNorm

PASS_THROUGH = (nn.LocalResponseNorm, LocalContrastNorm, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)
INVERTIBLE = (nn.Conv2d, nn.ReLU, nn.MaxPool2d) + PASS_THROUGH


@dataclass
class RecordedStep:
    """One module of the forward prefix and what its inverse needs."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...] = ()
    switches: torch.Tensor | None = None  # [N, C, H_out, W_out] flat argmax indices into H_in * W_in
    active: torch.Tensor | None = None  # [N, C, H, W] bool: where a ReLU's output was positive (guided, gradient)


def deconv_prefix(model: nn.Module, layer: str) -> list[tuple[str, nn.Module]]:
    """:func:`~zfexp.analysis.geometry.forward_prefix`, checked to hold only modules the deconvnet inverts."""
    prefix = forward_prefix(model, layer)
    for name, module in prefix:
        if not isinstance(module, INVERTIBLE):
            raise InvalidValueError(f"the deconvnet cannot invert {type(module).__name__} at {name!r}; it supports "
                                    f"{', '.join(t.__name__ for t in INVERTIBLE)} below the projected layer")
        if isinstance(module, nn.Conv2d):
            check_conv(name, module)
    return prefix


def check_conv(name: str, conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise InvalidValueError(f"grouped convolution at {name!r} is not supported by the deconvnet")
    if isinstance(conv.padding, str):
        raise InvalidValueError(f"padding={conv.padding!r} at {name!r}: the deconvnet needs numeric padding")


@torch.no_grad()
def record_forward(model: nn.Module, images: torch.Tensor, layer: str, keep_active: bool,
                   ) -> tuple[torch.Tensor, list[RecordedStep]]:
    """Run ``images [N, C, H, W]`` up to conv ``layer``'s ReLU in eval mode (the model's mode is restored);
    return that output ``[N, C_l, H_l, W_l]`` and the steps. ``keep_active``: record each ReLU's mask."""
    steps: list[RecordedStep] = []
    x = images
    with eval_mode(model):
        for name, module in deconv_prefix(model, layer):
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


def top_conv(steps: list[RecordedStep]) -> int:
    """Index of the projected layer's conv among ``steps``."""
    return next(i for i in range(len(steps) - 1, -1, -1) if isinstance(steps[i].module, nn.Conv2d))
