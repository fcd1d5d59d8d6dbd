"""Incremental inference for occlusion (``occlusion_maps(..., incremental=True)``): the occluded copies of an
image differ from it only under the square, and at each conv or pool layer only inside the square's footprint
there. For a plain ``nn.Sequential`` of leaf modules (ZFNet) each layer is computed only on that footprint,
batched over occluder positions, and pasted into the unoccluded activations; once the footprint covers most of
a map, or at the first layer that is not spatial (flatten, linear), it goes on with whole maps. Exactly the
numbers of running every occluded copy through the network; faster on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zfexp.analysis.geometry import SPATIAL, footprint, geometry, input_window
from zfexp.models.contrast_norm import LocalContrastNorm

POINTWISE = (nn.ReLU, nn.BatchNorm2d, nn.LocalResponseNorm, LocalContrastNorm, nn.Dropout, nn.Dropout2d, nn.Identity)


def sequential_leaves(model: nn.Module) -> list[nn.Module] | None:
    """The leaf modules in forward order when ``model`` is nested ``nn.Sequential`` with the stock forward
    (and convs that pad with zeros); else ``None``."""
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        return None
    leaves = []
    for child in model:
        if list(child.children()):
            inner = sequential_leaves(child)
            if inner is None:
                return None
            leaves += inner
        elif isinstance(child, nn.Conv2d) and (child.padding_mode != "zeros" or isinstance(child.padding, str)):
            return None  # windows are read with zero padding around the map
        else:
            leaves.append(child)
    return leaves


class IncrementalRun:
    """Incremental inference over a sequence of leaf modules: the unoccluded activations are computed once;
    each batch of occluded copies carries only the changed window of every map (``[B, C, h, w]`` at a per-item
    offset ``lo``) until the window covers most of the map."""

    FULL_AT = 0.8  # go on with whole maps once a window covers this fraction of its map (measured best: 0.7-0.9)

    def __init__(self, leaves: list[nn.Module], images: torch.Tensor, fill_image: torch.Tensor,
                 feature_module: nn.Module):
        self.leaves, self.fill_image = leaves, fill_image
        self.feature_index = next(i for i, m in enumerate(leaves) if m is feature_module)
        # Conv weights in the channels-last layout the batches use, converted once rather than at every call.
        self.weights = {i: m.weight.contiguous(memory_format=torch.channels_last)
                        for i, m in enumerate(leaves) if isinstance(m, nn.Conv2d)}
        self.inputs = []  # unoccluded input of every leaf, channels-last [N, H, W, C] where spatial
        x = images
        for module in leaves:
            self.inputs.append(x.permute(0, 2, 3, 1).contiguous() if x.dim() == 4 else x)
            x = module(x.clone() if getattr(module, "inplace", False) else x)
        self.outputs = self.inputs[1:] + [x]
        # The input of every conv and pool padded once with what the module pads with, wide enough for any window
        # it reads (its padding, plus a stride for a ceil-mode pool's last window): reads need no bounds checks.
        self.padded = {i: _pad(self.inputs[i], *self._margin(m))
                       for i, m in enumerate(leaves) if isinstance(m, SPATIAL)}

    @staticmethod
    def _margin(module: nn.Conv2d | nn.MaxPool2d) -> tuple[int, float]:
        """How wide a border ``module``'s padded input gets, and its value."""
        g = geometry(module)
        return max(g.padding) + max(g.stride), float("-inf") if isinstance(module, nn.MaxPool2d) else 0.0

    def forward(self, item_image, item_r, item_c, patch, feature_map):
        b = len(item_image)
        full = None
        lo = (item_r, item_c)
        size = (patch, patch)
        # The square itself: the fill image's pixels under it, read from [1, H + patch, W + patch, C] since the
        # last squares may reach past the image (their pixels there are dropped when pasted into a map).
        fill = F.pad(self.fill_image, (0, patch, 0, patch)).permute(1, 2, 0)[None].contiguous()
        window = _gather(fill, torch.zeros_like(item_image), lo, size)
        activity = None
        for i, module in enumerate(self.leaves):
            if full is None:
                if isinstance(module, SPATIAL):
                    out_shape = self.outputs[i].shape  # [N, H, W, C]
                    out_lo, out_size = footprint(module, lo, size, (out_shape[1], out_shape[2]))
                    # A pool is cheap on a window whatever its size; a conv only while the window is small.
                    limit = self.FULL_AT if isinstance(module, nn.Conv2d) else 1.0
                    if out_size[0] * out_size[1] < limit * out_shape[1] * out_shape[2]:
                        window, lo, size = self._spatial(module, i, item_image, window, lo, size, out_lo, out_size)
                    else:
                        full = self._paste(i, item_image, window, lo)
                elif isinstance(module, POINTWISE):
                    window = _apply_own(module, window)
                else:
                    full = self._paste(i, item_image, window, lo)
            if full is not None:
                if isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple):
                    full = F.conv2d(full, self.weights[i], module.bias, module.stride, module.padding,
                                    module.dilation, module.groups)
                else:
                    full = _apply_own(module, full)
            if i == self.feature_index:
                channel = feature_map[item_image]
                if full is not None:
                    activity = full[torch.arange(b), channel].sum((-2, -1))
                else:
                    activity = self._window_activity(i, item_image, window, lo, size, channel)
        if full is None:  # a network that ends on a spatial map
            full = self._paste(len(self.leaves), item_image, window, lo)
        return full, activity

    def _spatial(self, module, i, item_image, window, lo, size, out_lo, out_size):
        """Compute ``module`` on the window of its output that the change reaches."""
        read_lo, read_size = input_window(module, out_lo, out_size)
        margin = self._margin(module)[0]
        x = _gather(self.padded[i], item_image, (read_lo[0] + margin, read_lo[1] + margin), read_size, window,
                    (lo[0] + margin, lo[1] + margin), map_lo=margin, map_size=self.inputs[i].shape[1:3])
        if isinstance(module, nn.Conv2d):
            out = F.conv2d(x, self.weights[i], module.bias, module.stride, 0, module.dilation, module.groups)
        else:
            out = F.max_pool2d(x, module.kernel_size, module.stride, 0, module.dilation)
        return out, out_lo, out_size

    def _paste(self, i, item_image, window, lo) -> torch.Tensor:
        """The whole input of leaf ``i`` for every item: the unoccluded map with the window pasted in."""
        base = self.inputs[i] if i < len(self.inputs) else self.outputs[-1]
        if base.dim() != 4:
            raise RuntimeError("occlusion_maps: the change reached a non-spatial tensor while still windowed")
        height, width = base.shape[1:3]
        zero = torch.zeros_like(item_image)
        return _gather(base, item_image, (zero, zero), (height, width), window, lo).contiguous(
            memory_format=torch.channels_last)

    def _window_activity(self, i, item_image, window, lo, size, channel) -> torch.Tensor:
        """Total of each item's followed map: the unoccluded total plus the change inside the window (which lies
        inside the map: footprints are kept there)."""
        base = self.outputs[i]  # [N, H, W, C]
        items = torch.arange(len(item_image), device=window.device)
        total = base[item_image].sum((1, 2))[items, channel]
        rows = lo[0][:, None] + torch.arange(size[0], device=base.device)  # [B, h]
        cols = lo[1][:, None] + torch.arange(size[1], device=base.device)
        before = base[item_image[:, None, None], rows[:, :, None], cols[:, None, :], channel[:, None, None]]
        return total + (window[items, channel] - before).sum((-2, -1))


def _apply_own(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a tensor the engine owns: ReLUs in place, dropout (eval) skipped."""
    if isinstance(module, nn.ReLU):
        return x.relu_()
    if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return x
    return module(x)


def _pad(base: torch.Tensor, margin: int, value: float) -> torch.Tensor:
    """``base [N, H, W, C]`` with ``margin`` rows and columns of ``value`` on every side."""
    return F.pad(base, (0, 0, margin, margin, margin, margin), value=value) if margin else base


def _gather(base: torch.Tensor, item_image: torch.Tensor, read_lo, read_size, window: torch.Tensor | None = None,
            window_lo=None, map_lo: int = 0, map_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per item, the ``read_size`` window at ``read_lo`` of the map ``base [N, H, W, C]`` of its image (inside
    ``base``: pad it first, :func:`_pad`), with ``window [B, C, h, w]`` (at ``window_lo``) pasted over it.
    The parts of ``window`` outside the read window, or outside the map proper (``map_size`` at ``map_lo``
    in a padded ``base``: a square that reaches past the image), are dropped. Returns ``[B, C, h_r, w_r]``,
    channels-last.

    Both steps are row copies of a flattened ``[N * H * W, C]`` map (``index_select``, ``index_copy_``): the
    cost is that of the bytes moved, not of a mask over the whole read window."""
    _, height, width, channels = base.shape
    h_r, w_r = read_size
    device = base.device
    rows = read_lo[0][:, None] + torch.arange(h_r, device=device)  # [B, h_r]
    cols = read_lo[1][:, None] + torch.arange(w_r, device=device)
    source = ((item_image[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]).flatten()
    if window is None:
        return base.reshape(-1, channels).index_select(0, source).view(-1, h_r, w_r, channels).permute(0, 3, 1, 2)
    # One spare row at the end receives the window's pixels that fall outside the read window.
    spare = source.numel()
    out = base.reshape(-1, channels).index_select(0, torch.cat([source, source[:1]]))  # [B * h_r * w_r + 1, C]
    b, _, h, w = window.shape
    rel_r = (window_lo[0] - read_lo[0])[:, None] + torch.arange(h, device=device)  # [B, h]
    rel_c = (window_lo[1] - read_lo[1])[:, None] + torch.arange(w, device=device)
    items = torch.arange(b, device=device)[:, None, None]
    target = (items * h_r + rel_r[:, :, None]) * w_r + rel_c[:, None, :]
    height_map, width_map = map_size or (height, width)
    first_r, first_c = (map_lo - read_lo[0])[:, None], (map_lo - read_lo[1])[:, None]  # the map's first row, col
    inside = (((rel_r >= first_r.clamp(min=0)) & (rel_r < (first_r + height_map).clamp(max=h_r)))[:, :, None]
              & ((rel_c >= first_c.clamp(min=0)) & (rel_c < (first_c + width_map).clamp(max=w_r)))[:, None, :])
    out.index_copy_(0, torch.where(inside, target, spare).flatten(), window.permute(0, 2, 3, 1).reshape(-1, channels))
    return out[:spare].view(b, h_r, w_r, channels).permute(0, 3, 1, 2)
