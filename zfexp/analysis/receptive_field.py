"""Receptive fields on any network: the input box each unit of a layer sees, found from the support of the
gradients of two neighbouring units under a forward pass in which nothing cancels (:class:`_Reach`). On plain
sequential networks it equals the arithmetic of kernel sizes and strides (:mod:`zfexp.analysis.geometry`).

Globally pooled features (a squeeze-excite block's gate, a global average) are constants of that forward: they
scale whole maps and move no unit's field, which is the local one the convs and pools give. A layer whose maps
are themselves globally pooled (a squeeze-excite conv) has no field: :class:`GlobalLayerError` says so."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from zfexp.analysis.graph import OTHER_ACTIVATIONS, RELUS
from zfexp.analysis.network import StopForward, eval_mode
from zfexp.errors import InvalidValueError

NORMS = {F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.dropout, F.dropout2d}


class GlobalLayerError(InvalidValueError):
    """A layer whose maps do not grow with the image: it works on globally pooled features."""


class _Reach(TorchFunctionMode):
    """A forward pass whose gradient reaches every input pixel a unit depends on, with nothing cancelling, in
    float64: every conv and linear layer an average over its window (positive weights, no bias), batch, layer
    and group norm, dropout and activations the identity, max-pools averaged (their gradient would reach only
    the switch), and any global pooling of a map (``[N, C, H, W]`` -> ``[N, C, 1, 1]``) a constant. Used on an
    input of ones, the support of a unit's gradient is its receptive field."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            x, weight, *rest = args
            rest = rest[1:] if rest else []  # the bias
            kwargs = {k: v for k, v in kwargs.items() if k != "bias"}
            return _average_conv(x, weight.shape, *rest, **kwargs)
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            return x.mean(-1, keepdim=True).expand(*x.shape[:-1], weight.shape[0]).contiguous()  # in-place ops follow
        if func in NORMS or func in RELUS or func in OTHER_ACTIVATIONS:
            return args[0]
        if func in (F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d):
            return _average_pool(*args, **kwargs)
        out = func(*args, **kwargs)
        first = args[0] if args else None
        if (isinstance(out, torch.Tensor) and isinstance(first, torch.Tensor) and out.dim() == first.dim() == 4
                and out.shape[-2:] == (1, 1) and min(first.shape[-2:]) > 1):
            return out.detach()  # a global pooling: a constant here
        return out


def _average_conv(x: torch.Tensor, weight_shape: torch.Size, stride=1, padding=0, dilation=1, groups=1,
                  ) -> torch.Tensor:
    """``F.conv2d(x, w)`` for ``w`` of ``weight_shape`` ``[C_out, C_in / groups, kh, kw]`` with every weight
    ``1 / (C_in / groups * kh * kw)``, without ``w``: each group's channels summed, one box filter per group,
    its map repeated for the group's outputs. No weight-sized tensor is made, in the forward or the gradient (a
    float64 copy of a 600M-parameter RegNet's weights would be 5 GB). ``x``: ``[N, C_in, H, W]``."""
    out_channels, per_group, kh, kw = weight_shape
    summed = x.unflatten(1, (groups, per_group)).sum(2)  # [N, groups, H, W]
    box = torch.full((groups, 1, kh, kw), 1.0 / (per_group * kh * kw), dtype=x.dtype, device=x.device)
    maps = F.conv2d(summed, box, None, stride, padding, dilation, groups)  # [N, groups, H', W']
    return maps.repeat_interleave(out_channels // groups, dim=1)  # [N, C_out, H', W'], a group's outputs together


def _average_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if dilation not in (1, (1, 1)):
        raise InvalidValueError("a max-pool with dilation: its receptive field is not computed; use the network's "
                                "convs before it")
    return F.avg_pool2d(x, kernel_size, stride or kernel_size, padding, ceil_mode=ceil_mode, count_include_pad=True)


class Field(NamedTuple):
    """Where each unit of a layer looks: unit ``(r, c)`` sees the input box starting at ``r * jump + offset`` of
    ``size`` pixels, each ``(rows, cols)``, before clipping to the image."""

    jump: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]

    def box(self, position: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)``, inclusive, clipped to an image of ``image_size``."""
        lo = [position[d] * self.jump[d] + self.offset[d] for d in range(2)]
        return (max(lo[0], 0), max(lo[1], 0), min(lo[0] + self.size[0] - 1, image_size[0] - 1),
                min(lo[1] + self.size[1] - 1, image_size[1] - 1))


@dataclass(frozen=True)
class ClippedField:
    """A layer whose units see more than the largest input probed: each unit's box on images of ``image_size``,
    already clipped, by row (``rows[r] = (top, bottom)``) and column (``cols[c] = (left, right)``); ``size`` is
    the image's (a lower bound of the field)."""

    image_size: tuple[int, int]
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def size(self) -> tuple[int, int]:
        return self.image_size

    def box(self, position: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        if tuple(image_size) != self.image_size:
            raise ValueError(f"a field found on {self.image_size} images is asked for {tuple(image_size)} ones")
        (top, bottom), (left, right) = self.rows[position[0]], self.cols[position[1]]
        return top, left, bottom, right


_FIELDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
PROBED_SIDES = 2  # inputs up to 2x the image's side are probed for the unclipped field


def field_geometry(model: nn.Module, layer: str, in_channels: int, image_size: tuple[int, int] | int = 64,
                   ) -> Field | ClippedField:
    """Where the units of ``layer`` look, in any network: from the support of two neighbouring units'
    gradients on an input large enough to hold them whole, tried from the image's side up to twice it, doubling
    (:class:`Field`); a layer whose units see more than that gets each unit's box on images of ``image_size``
    (:class:`ClippedField`). Memory and time stay those of a forward at most twice the image's side. Cached per
    model and layer (and image size, for a clipped field)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    known = _FIELDS.setdefault(model, {})
    for key in ((layer, in_channels), (layer, in_channels, height, width)):
        if key in known:
            return known[key]
    field = _probe_field(model, layer, in_channels, (height, width))
    known[(layer, in_channels) if isinstance(field, Field) else (layer, in_channels, height, width)] = field
    return field


def _probe_field(model: nn.Module, layer: str, in_channels: int, image_size: tuple[int, int],
                 ) -> Field | ClippedField:
    module = dict(model.named_modules())[layer]
    side, previous = max(image_size), None
    while side <= PROBED_SIDES * max(image_size):
        try:
            probe = _Probe(model, module, in_channels, (side, side))
        except (InvalidValueError, StopForward):
            raise
        except Exception as err:  # the network does not take this size
            if previous is None:
                raise InvalidValueError(f"layer={layer!r}: its receptive field cannot be found: the forward that "
                                        f"finds it fails at {side} px ({type(err).__name__}: {err})") from err
            break
        if probe.shape is None:
            raise InvalidValueError(f"layer={layer!r} gives {probe.kind}, not maps [N, C, H, W]: it has no receptive "
                                    "field to draw")
        if previous is not None and probe.shape == previous and min(probe.shape) < 2:
            raise GlobalLayerError(f"layer={layer!r} gives maps of {probe.shape[0]}x{probe.shape[1]} at every image "
                                   "size: it works on globally pooled features (a squeeze-excite block's conv), whose "
                                   "units see the whole image; there is no receptive field to draw")
        field = probe.middle_field()
        if field is not None:
            return field
        side, previous = side * 2, probe.shape
    return _Probe(model, module, in_channels, image_size).clipped_field()


class _Probe:
    """One :class:`_Reach` forward of ``model`` on ones of ``size`` up to ``module``: its output map's ``shape``
    ``(H, W)`` (``None`` for other outputs), and the support of units' gradients."""

    def __init__(self, model: nn.Module, module: nn.Module, in_channels: int, size: tuple[int, int]):
        self.x = torch.ones(1, in_channels, *size, device=next(model.parameters()).device, dtype=torch.float64,
                            requires_grad=True)
        caught = {}

        def hook(_module, _inputs, output):
            caught["out"] = output
            raise StopForward

        handle = module.register_forward_hook(hook)
        with eval_mode(model), torch.enable_grad():  # also inside an analysis's no_grad
            try:
                with _Reach():
                    model(self.x)
            except StopForward:
                pass
            finally:
                handle.remove()
        out = caught.get("out")
        self.out = out if isinstance(out, torch.Tensor) and out.dim() == 4 else None
        self.kind = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        self.shape: tuple[int, int] | None = None if self.out is None else (self.out.shape[-2], self.out.shape[-1])

    def _maps(self) -> tuple[torch.Tensor, tuple[int, int]]:
        """The output maps ``[1, C, H, W]`` and their ``(H, W)``: asked for only once the layer is known to give
        maps (``shape`` is not ``None``, checked by :func:`_probe_field`)."""
        assert self.out is not None and self.shape is not None, "the layer gives no maps [N, C, H, W]"
        return self.out, self.shape

    def _support(self, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input rows and columns the gradient of ``seed``'s units reaches."""
        out, _ = self._maps()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(out, self.x, seed, retain_graph=True)
        reached = grad.abs().sum((0, 1))
        return reached.sum(1).nonzero().flatten(), reached.sum(0).nonzero().flatten()

    def middle_field(self) -> Field | None:
        """The :class:`Field` from the two units left of and above the middle, ``None`` when a box touches the
        input's border (the input is too small to hold it) or the map is smaller than 2x2."""
        out, shape = self._maps()
        if min(shape) < 2:
            return None
        height, width = self.x.shape[-2:]
        middle = (shape[0] // 2, shape[1] // 2)
        boxes = []
        for row, col in ((middle[0] - 1, middle[1] - 1), middle):
            seed = torch.zeros_like(out)
            seed[0, :, row, col] = 1
            rows, cols = self._support(seed)
            if not len(rows) or rows[0] == 0 or cols[0] == 0 or rows[-1] == height - 1 or cols[-1] == width - 1:
                return None
            boxes.append((int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1]), row, col))
        (t0, l0, b0, r0, row, col), (t1, l1, *_), = boxes
        jump = (t1 - t0, l1 - l0)
        return Field(jump, (t0 - row * jump[0], l0 - col * jump[1]), (b0 - t0 + 1, r0 - l0 + 1))

    def clipped_field(self) -> ClippedField:
        """Each row's and each column's input extent on this input: a row of units seeded together reaches the
        rows each of them reaches."""
        out, shape = self._maps()
        height, width = self.x.shape[-2:]
        rows, cols = [], []
        for row in range(shape[0]):
            seed = torch.zeros_like(out)
            seed[0, :, row] = 1
            rows.append(_extent(self._support(seed)[0], height))
        for col in range(shape[1]):
            seed = torch.zeros_like(out)
            seed[0, :, :, col] = 1
            cols.append(_extent(self._support(seed)[1], width))
        return ClippedField((height, width), tuple(rows), tuple(cols))


def _extent(reached: torch.Tensor, side: int) -> tuple[int, int]:
    """The first and last index reached; the whole side where nothing is (a unit that depends on no pixel)."""
    return (int(reached[0]), int(reached[-1])) if len(reached) else (0, side - 1)
