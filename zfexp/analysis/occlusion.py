"""Occlusion sensitivity (Fig. 7): slide a grey square over the image and watch the classifier and a layer-5
feature map.

The occluded copies of an image differ from it only under the square, and at each conv or pool layer only
inside the square's footprint there. For networks that are a plain ``nn.Sequential`` of leaf modules (ZFNet),
``occlusion_maps`` computes each layer only on that footprint, batched over occluder positions, and pastes
it into the unoccluded activations (incremental inference); once the footprint covers most of a map, or at
the first layer that is not spatial (flatten, linear), it goes on with whole maps. The results are exactly
those of running every occluded copy through the network, which is what it does for other networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from zfexp.analysis.deconv import DeconvNet, forward_prefix
from zfexp.errors import InvalidValueError

POINTWISE = (nn.ReLU, nn.BatchNorm2d, nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass
class OcclusionMaps:
    """What ``occlusion_maps`` returns, for ``N`` images and an ``R x S`` grid of occluder positions.

    ``prob_true [N, R, S]``: probability of the true class with the square at each position;
    ``top_label [N, R, S]``: most probable class there; ``feature_activity [N, R, S]``: total activation of
    ``feature_map [N]`` (the map of the feature layer with the strongest activation on the unoccluded image);
    ``projection [N, C, H, W]``: that map's strongest activation on the unoccluded image, projected to pixels
    by the deconvnet; ``base_prob [N]``, ``base_label [N]``, ``base_activity [N]``: the same without occluder;
    ``rows [R]``, ``cols [S]``: the square's top-left corners; ``patch``: its side in pixels.
    """

    prob_true: torch.Tensor
    top_label: torch.Tensor
    feature_activity: torch.Tensor
    feature_map: torch.Tensor
    projection: torch.Tensor
    base_prob: torch.Tensor
    base_label: torch.Tensor
    base_activity: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    patch: int

    def table(self) -> list[dict]:
        """One row per image and occluder position: what a CSV file or a W&B table holds."""
        out = []
        for i in range(self.prob_true.shape[0]):
            for r, top in enumerate(self.rows.tolist()):
                for c, left in enumerate(self.cols.tolist()):
                    out.append({"image": i, "top": top, "left": left, "patch": self.patch,
                                "prob_true": float(self.prob_true[i, r, c]), "top_label": int(self.top_label[i, r, c]),
                                "feature_map": int(self.feature_map[i]),
                                "feature_activity": float(self.feature_activity[i, r, c])})
        return out

    def pixel_attribution(self, image_size: tuple[int, int]) -> torch.Tensor:
        """``[N, H, W]``: per pixel, the mean drop of the true-class probability over the occluder positions
        that cover it (0 where none does); captum's ``Occlusion`` attribution for the same settings."""
        n, height, width = self.prob_true.shape[0], *image_size
        drop = self.base_prob[:, None, None] - self.prob_true  # [N, R, S]
        total = drop.new_zeros((n, height, width))
        count = drop.new_zeros((height, width))
        for i, r in enumerate(self.rows.tolist()):
            for j, c in enumerate(self.cols.tolist()):
                total[:, r:r + self.patch, c:c + self.patch] += drop[:, i, j, None, None]
                count[r:r + self.patch, c:c + self.patch] += 1
        return total / count.clamp_min(1)


def occluder_positions(size: int, patch: int, stride: int) -> torch.Tensor:
    """Top-left corners along one side: every ``stride`` pixels, the last square clipped by the border so that
    every pixel is covered when ``stride <= patch`` (captum's convention)."""
    return torch.arange(math.ceil((size - patch) / stride) + 1) * stride


@torch.no_grad()
def occlusion_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | list[int], patch: int,
                   stride: int, fill: float | torch.Tensor | None = None, feature_layer: str = "conv5",
                   batch_size: int = 64, incremental: bool | None = None,
                   probabilities: Callable[[torch.Tensor], torch.Tensor] | None = None) -> OcclusionMaps:
    """Occlusion sensitivity of ``images [N, C, H, W]`` with true ``labels [N]``.

    Args:
        patch, stride: side of the square and its step, in pixels.
        fill: what the square is filled with: a number, a per-channel ``[C]`` or a full ``[C, H, W]`` tensor;
            ``None`` is 0, the dataset mean for mean-subtracted inputs (the paper's grey square).
        feature_layer: conv layer whose strongest map on the unoccluded image is followed (post-ReLU).
        batch_size: occluded copies per forward batch (memory bound).
        incremental: compute only the square's footprint at each layer; ``None``: whenever the network is a
            plain ``nn.Sequential`` (same results either way).
        probabilities: logits -> class probabilities (default softmax).
    """
    model = model.eval()
    n, c, height, width = images.shape
    labels = torch.as_tensor(labels, dtype=torch.long, device=images.device).flatten()
    if labels.numel() != n:
        raise InvalidValueError(f"occlusion_maps: {n} images but {labels.numel()} labels")
    for name, value in (("patch", patch), ("stride", stride), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidValueError(f"occlusion_maps: {name}={value!r} must be a positive integer")
    if patch > min(height, width):
        raise InvalidValueError(f"occlusion_maps: patch={patch} is larger than the {height}x{width} image; valid: "
                                f"1..{min(height, width)}")
    prefix = forward_prefix(model, feature_layer)  # names a bad layer with the valid ones
    probabilities = probabilities or (lambda logits: logits.softmax(-1))
    fill_image = _fill_image(fill, images)
    rows, cols = occluder_positions(height, patch, stride), occluder_positions(width, patch, stride)
    leaves = _sequential_leaves(model)
    if incremental is None:
        incremental = leaves is not None
    if incremental and leaves is None:
        raise InvalidValueError("occlusion_maps: incremental=True needs a model that is a plain nn.Sequential of its "
                                f"leaf modules with zero-padded convs; {type(model).__name__} is not (use "
                                "incremental=False)")

    deconv = DeconvNet(model)
    feats = deconv.features(images, feature_layer)  # [N, C_l, H_l, W_l]
    feature_map = feats.flatten(2).amax(2).argmax(1)  # [N]
    base_activity = feats[torch.arange(n), feature_map].sum((-2, -1))
    base_probs = probabilities(model(images))
    projection = deconv.project_units(images, feature_layer, feature_map)

    # Items are (image, position) pairs, image-major.
    pos_r, pos_c = torch.meshgrid(rows, cols, indexing="ij")
    n_pos = pos_r.numel()
    item_image = torch.arange(n, device=images.device).repeat_interleave(n_pos)
    item_r = pos_r.flatten().to(images.device).repeat(n)
    item_c = pos_c.flatten().to(images.device).repeat(n)
    logits, activity = [], []
    run = _IncrementalRun(leaves, images, fill_image, prefix[-1][1]) if incremental else None
    for start in range(0, n * n_pos, batch_size):
        idx = slice(start, start + batch_size)
        if run is not None:
            out, act = run.forward(item_image[idx], item_r[idx], item_c[idx], patch, feature_map)
        else:
            out, act = _occluded_forward(model, images, fill_image, prefix[-1][1], item_image[idx], item_r[idx],
                                         item_c[idx], patch, feature_map)
        logits.append(out)
        activity.append(act)
    probs = probabilities(torch.cat(logits)).view(n, len(rows), len(cols), -1)
    grid = (n, len(rows), len(cols))
    return OcclusionMaps(
        prob_true=probs.gather(3, labels.view(n, 1, 1, 1).expand(*grid, 1))[..., 0],
        top_label=probs.argmax(3), feature_activity=torch.cat(activity).view(grid), feature_map=feature_map,
        projection=projection, base_prob=base_probs[torch.arange(n), labels], base_label=base_probs.argmax(1),
        base_activity=base_activity, rows=rows, cols=cols, patch=patch)


def _fill_image(fill, images: torch.Tensor) -> torch.Tensor:
    """The occluder's content as a ``[C, H, W]`` image."""
    shape = images.shape[1:]
    if fill is None:
        fill = 0.0
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    if fill.dim() == 1 and fill.numel() == shape[0]:
        fill = fill.view(-1, 1, 1)
    if fill.dim() not in (0, 3) or (fill.dim() == 3 and fill.shape != shape and fill.shape[1:] != (1, 1)):
        raise InvalidValueError(f"occlusion_maps: fill of shape {tuple(fill.shape)}; valid: a number, [C]={shape[0]} "
                                f"or [C, H, W]={tuple(shape)}")
    return fill.expand(shape).contiguous()


def _occlusion_mask(item_r: torch.Tensor, item_c: torch.Tensor, patch: int, height: int, width: int):
    """``[B, 1, H, W]``: True under each item's square."""
    r = torch.arange(height, device=item_r.device)
    c = torch.arange(width, device=item_c.device)
    in_r = (r >= item_r[:, None]) & (r < item_r[:, None] + patch)
    in_c = (c >= item_c[:, None]) & (c < item_c[:, None] + patch)
    return (in_r[:, :, None] & in_c[:, None, :]).unsqueeze(1)


def _occluded_forward(model, images, fill_image, feature_module, item_image, item_r, item_c, patch, feature_map):
    """The plain way: whole occluded copies through the whole network, the feature map caught by a hook."""
    mask = _occlusion_mask(item_r, item_c, patch, *images.shape[-2:])
    # Channels-last: the CPU convolutions run a quarter faster on it, for the same sums.
    x = torch.where(mask, fill_image, images[item_image]).contiguous(memory_format=torch.channels_last)
    caught = {}
    handle = feature_module.register_forward_hook(lambda m, i, o: caught.__setitem__("out", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    feats = caught["out"]
    activity = feats[torch.arange(len(x)), feature_map[item_image]].sum((-2, -1))
    return logits, activity


def _sequential_leaves(model: nn.Module) -> list[nn.Module] | None:
    """The leaf modules in forward order when ``model`` is nested ``nn.Sequential`` with the stock forward
    (and convs that pad with zeros); else ``None``."""
    if type(model).forward is not nn.Sequential.forward:
        return None
    leaves = []
    for child in model:
        if list(child.children()):
            inner = _sequential_leaves(child)
            if inner is None:
                return None
            leaves += inner
        elif isinstance(child, nn.Conv2d) and (child.padding_mode != "zeros" or isinstance(child.padding, str)):
            return None  # windows are read with zero padding around the map
        else:
            leaves.append(child)
    return leaves


class _IncrementalRun:
    """Incremental inference over a sequence of leaf modules: the unoccluded activations are computed once;
    each batch of occluded copies carries only the changed window of every map (``[B, C, h, w]`` at a per-item
    offset ``lo``) until the window covers most of the map."""

    FULL_AT = 0.5  # go on with whole maps once a window covers this fraction of its map

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

    def forward(self, item_image, item_r, item_c, patch, feature_map):
        b = len(item_image)
        full = None
        lo = (item_r, item_c)
        size = (patch, patch)
        # The square itself: the fill image's pixels under it.
        window = _gather(self.fill_image.permute(1, 2, 0).unsqueeze(0), torch.zeros_like(item_image), lo, size)
        activity = None
        for i, module in enumerate(self.leaves):
            if full is None:
                spatial = isinstance(module, (nn.Conv2d, nn.MaxPool2d))
                if spatial:
                    out_shape = self.outputs[i].shape  # [N, H, W, C]
                    out_lo, out_size = _footprint(module, lo, size, out_shape[1:3])
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
        kernel, stride, padding, dilation = _geometry(module)
        read_lo = tuple(out_lo[d] * stride[d] - padding[d] for d in range(2))
        read_size = tuple((out_size[d] - 1) * stride[d] + dilation[d] * (kernel[d] - 1) + 1 for d in range(2))
        pad_value = float("-inf") if isinstance(module, nn.MaxPool2d) else 0.0  # what the module pads with
        x = _gather(self.inputs[i], item_image, read_lo, read_size, window, lo, pad_value)
        if isinstance(module, nn.Conv2d):
            out = F.conv2d(x, self.weights[i], module.bias, stride, 0, dilation, module.groups)
        else:
            out = F.max_pool2d(x, kernel, stride, 0, dilation)
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
        """Total of each item's followed map: the unoccluded total plus the change inside the window."""
        base = self.outputs[i]  # [N, H, W, C]
        rows = torch.arange(len(item_image), device=window.device)
        total = base[item_image].sum((1, 2))[rows, channel]
        before = _gather(base, item_image, lo, size)[rows, channel]  # [B, h, w], zero outside the map
        after = _gather(base, item_image, lo, size, window, lo)[rows, channel]
        return total + (after - before).sum((-2, -1))


def _apply_own(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a tensor the engine owns: ReLUs in place, dropout (eval) skipped."""
    if isinstance(module, nn.ReLU):
        return x.relu_()
    if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return x
    return module(x)


def _geometry(module):
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    stride = module.stride if module.stride is not None else module.kernel_size
    return pair(module.kernel_size), pair(stride), pair(module.padding), pair(module.dilation)


def _footprint(module, lo, size, out_hw):
    """The window of ``module``'s output reached by a change in its input window (offsets ``lo``, ``size``):
    per-item offsets and one size for all, kept inside the output map."""
    if isinstance(module.padding, str):
        raise InvalidValueError(f"occlusion_maps: padding={module.padding!r} is not supported incrementally; use "
                                "incremental=False")
    kernel, stride, padding, dilation = _geometry(module)
    out_lo, out_size = [], []
    for d in range(2):
        reach = dilation[d] * (kernel[d] - 1)
        first = torch.div(lo[d] + padding[d] - reach + stride[d] - 1, stride[d], rounding_mode="floor").clamp_min(0)
        last = torch.div(lo[d] + size[d] - 1 + padding[d], stride[d], rounding_mode="floor").clamp_max(out_hw[d] - 1)
        count = max(int((last - first).max()) + 1, 1)
        count = min(count, out_hw[d])
        out_lo.append(torch.minimum(first, torch.full_like(first, out_hw[d] - count)))
        out_size.append(count)
    return tuple(out_lo), tuple(out_size)


def _gather(base: torch.Tensor, item_image: torch.Tensor, read_lo, read_size, window: torch.Tensor | None = None,
            window_lo=None, pad_value: float = 0.0) -> torch.Tensor:
    """Per item, the ``read_size`` window at ``read_lo`` of the map ``base [N, H, W, C]`` of its image, with
    ``window [B, C, h, w]`` (at ``window_lo``) pasted over it and ``pad_value`` outside the map.
    Returns ``[B, C, h_r, w_r]`` (channels-last in memory)."""
    height, width = base.shape[1:3]
    rows = read_lo[0][:, None] + torch.arange(read_size[0], device=base.device)  # [B, h_r]
    cols = read_lo[1][:, None] + torch.arange(read_size[1], device=base.device)
    out = base[item_image[:, None, None], rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]]
    if window is not None:
        h, w = window.shape[2:]
        rel_r, rel_c = rows - window_lo[0][:, None], cols - window_lo[1][:, None]
        inside = ((rel_r >= 0) & (rel_r < h))[:, :, None] & ((rel_c >= 0) & (rel_c < w))[:, None, :]
        items = torch.arange(len(item_image), device=base.device)[:, None, None]
        pasted = window.permute(0, 2, 3, 1)[items, rel_r.clamp(0, h - 1)[:, :, None], rel_c.clamp(0, w - 1)[:, None, :]]
        out = torch.where(inside[..., None], pasted, out)
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= height or cols.max() >= width:
        in_map = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        out = torch.where(in_map[..., None], out, torch.full((), pad_value, dtype=out.dtype, device=out.device))
    return out.permute(0, 3, 1, 2)
