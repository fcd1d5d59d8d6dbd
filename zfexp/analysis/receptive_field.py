"""Receptive fields on any network: the input box each unit of a layer sees, found from the support of the
gradients of two neighbouring units under a forward pass in which nothing cancels (:class:`_Reach`). On plain
sequential networks it equals the arithmetic of kernel sizes and strides (:mod:`zfexp.analysis.geometry`)."""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from zfexp.analysis.graph import OTHER_ACTIVATIONS, RELUS
from zfexp.errors import InvalidValueError


class _Reached(Exception):
    """Raised by the probed layer's hook: the forward needs to go no further."""


class _Reach(TorchFunctionMode):
    """A forward pass whose gradient reaches every input pixel a unit depends on, with nothing cancelling: every
    conv's weights set to one and no bias, batch norm and activations the identity, max-pools averaged (their
    gradient would reach only the switch). Used on an input of ones, the support of a unit's gradient is its
    receptive field."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            x, weight, *rest = args
            rest = rest[1:] if rest else []  # the bias
            return F.conv2d(x, torch.ones_like(weight), None, *rest, **{k: v for k, v in kwargs.items() if k != "bias"})
        if func is F.batch_norm or func in RELUS or func in OTHER_ACTIVATIONS or func is F.dropout:
            return args[0]
        if func in (F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d):
            return _average_pool(*args, **kwargs)
        return func(*args, **kwargs)


def _average_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if dilation not in (1, (1, 1)):
        raise InvalidValueError("a max-pool with dilation: its receptive field is not computed; use the network's "
                                "convs before it")
    return F.avg_pool2d(x, kernel_size, stride or kernel_size, padding, ceil_mode=ceil_mode, count_include_pad=True)


_FIELDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def field_geometry(model: nn.Module, layer: str, in_channels: int) -> tuple[tuple[int, int], tuple[int, int],
                                                                               tuple[int, int]]:
    """``(jump, offset, size)``, each ``(rows, cols)``: unit ``(r, c)`` of ``layer``'s output sees the input box
    starting at ``r * jump + offset`` of ``size`` pixels (before clipping to the image), in any network: from
    the support of two units' gradients on an input large enough to hold them whole. Cached per model and
    layer."""
    key = (layer, in_channels)
    known = _FIELDS.setdefault(model, {})
    if key not in known:
        known[key] = _probe_field(model, layer, in_channels)
    return known[key]


def _probe_field(model: nn.Module, layer: str, in_channels: int):
    module = dict(model.named_modules())[layer]
    side = 64
    while True:
        boxes = _probe_boxes(model, module, in_channels, side)
        if boxes is not None:
            (t0, l0, b0, r0, row, col), (t1, l1, *_), = boxes
            jump = (t1 - t0, l1 - l0)
            return jump, (t0 - row * jump[0], l0 - col * jump[1]), (b0 - t0 + 1, r0 - l0 + 1)
        if side >= 4096:
            raise InvalidValueError(f"layer={layer!r}: its receptive field could not be found on inputs up to 4096 px")
        side *= 2


def _probe_boxes(model: nn.Module, module: nn.Module, in_channels: int, side: int):
    """The input boxes of two neighbouring units near the middle of ``module``'s output for an input of
    ``side`` pixels, ``None`` when a box touches the input's border (the input is too small to hold it)."""
    weight = next(model.parameters())
    x = torch.ones(1, in_channels, side, side, device=weight.device, dtype=weight.dtype, requires_grad=True)
    caught = {}

    def hook(_module, _inputs, output):
        caught["out"] = output
        raise _Reached

    handle = module.register_forward_hook(hook)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.enable_grad():  # also inside an analysis's no_grad
        try:
            with _Reach():
                model(x)
        except _Reached:
            pass
        finally:
            handle.remove()
            for m, training in modes:
                m.training = training
        out = caught["out"]
        if out.dim() != 4 or min(out.shape[-2:]) < 2:
            return None
        middle = (out.shape[-2] // 2, out.shape[-1] // 2)
        units = ((middle[0] - 1, middle[1] - 1), middle)
        grads = [torch.autograd.grad(out[0, :, row, col].sum(), x, retain_graph=True)[0] for row, col in units]
    boxes = []
    for grad, (row, col) in zip(grads, units, strict=True):
        rows, cols = grad.abs().sum((0, 1)).nonzero(as_tuple=True)
        top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
        if top == 0 or left == 0 or bottom == side - 1 or right == side - 1:
            return None
        boxes.append((top, left, bottom, right, row, col))
    return boxes
