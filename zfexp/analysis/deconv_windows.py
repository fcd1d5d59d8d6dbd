"""The deconvnet's fast way down for single units (``mode="max"``): the same sums as
:class:`~zfexp.analysis.deconv.DeconvNet`'s whole-map way, on receptive-field windows only.

A projection that starts from one unit is non-zero, at every layer on the way down, only inside that unit's
receptive field there: a window of the same size for every unit. Carrying just these windows (each at its own
offset) instead of whole maps does several times fewer multiply-adds for the deep layers of a 224-pixel network.
Nothing here changes a result; it is kept apart from the readable algorithm in ``deconv.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zfexp.analysis.deconv_record import RecordedStep, batch_norm_scale, top_conv
from zfexp.analysis.geometry import geometry, input_window, unit_windows
from zfexp.analysis.network import relu_rule


def windows_pay_off(steps: list[RecordedStep]) -> bool:
    """Whether windows do fewer multiply-adds than whole maps for this layer (whole maps win on small images).
    Multiply-adds of the transposed convs ~ their output area x filter size, either way; the top conv applies
    one filter per unit (whole maps) or is a copy of it (windows)."""
    top, whole, windows = top_conv(steps), 0, 0
    for i, (step, size) in enumerate(zip(steps, unit_windows([s.module for s in steps]), strict=True)):
        if isinstance(step.module, nn.Conv2d):
            weight = step.module.weight
            per_position = weight[0].numel() if i == top else weight.numel()
            whole += step.in_shape[2] * step.in_shape[3] * per_position
            windows += 0 if i == top else size[0] * size[1] * per_position
    return windows < whole


@torch.no_grad()
def project_unit_windows(steps: list[RecordedStep], image: torch.Tensor, chan: torch.Tensor, where: torch.Tensor,
                         value: torch.Tensor, images: torch.Tensor, width: int, max_elements: int,
                         rule: str) -> torch.Tensor:
    """Project single units: item ``b`` is unit ``where[b]`` (flat position in a map of ``width`` columns) of
    channel ``chan[b]`` of image ``image[b]`` of ``images [N, C, H, W]``, with activation ``value[b]``. Returns
    pixels ``[B, C, H, W]``.

    Every intermediate is a window ``[B, C_i, h_i, w_i]`` of the full map (channels-last in memory, which
    the CPU convolutions run much faster on), item ``b``'s window starting at its own offset; positions
    outside the map are kept at zero so that the result is exact."""
    row, col = where // width, where % width
    out = images.new_empty((len(image), *images.shape[1:]))
    sizes = unit_windows([s.module for s in steps])
    top = top_conv(steps)
    offsets = {i: _switch_offsets(steps[i], sizes[i]) for i in range(top)
               if isinstance(steps[i].module, nn.MaxPool2d)}
    per_item = max(h * w * step.in_shape[1] for step, (h, w) in zip(steps, sizes, strict=True))
    per_item = max(per_item, torch.Size(images.shape[1:]).numel())
    chunk = max(1, max_elements // per_item)
    # Unpooling buffers are reused from chunk to chunk: zeroing memory already mapped is several times
    # cheaper than allocating a fresh large tensor each time.
    workspace: dict[tuple, torch.Tensor] = {}
    for start in range(0, len(image), chunk):
        idx = slice(start, start + chunk)
        x, lo = _top_windows(steps[top], chan[idx], row[idx], col[idx], value[idx])
        for i in range(top - 1, -1, -1):
            x, lo = _invert_window(steps[i], x, lo, image[idx], offsets.get(i), workspace, rule)
        _place(x, lo, out[idx])
    return out


def _top_windows(step: RecordedStep, chan, row, col, value):
    """The chosen units through their transposed conv: each is its own filter scaled by its value (spread
    by the dilation), a copy rather than a convolution. ``[B, C_in, kh', kw']`` and the window offsets."""
    conv = step.module_as(nn.Conv2d)
    g = geometry(conv)
    b, (kh, kw), dilation = len(chan), g.kernel, g.dilation
    x = conv.weight.new_zeros((b, conv.in_channels, (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1))
    x[:, :, :: dilation[0], :: dilation[1]] = conv.weight[chan] * value.view(b, 1, 1, 1)
    lo, _ = input_window(conv, (row, col), (1, 1))  # the window's offset in the conv's input
    return _zero_outside(x, lo, step.in_shape), lo


def _invert_window(step: RecordedStep, x: torch.Tensor, lo, image: torch.Tensor, switch_offsets: torch.Tensor | None,
                   workspace: dict[tuple, torch.Tensor], rule: str):
    """One module of the way down on windows ``x [B, C, h, w]`` at offsets ``lo = (rows [B], cols [B])`` in
    the module's output; returns the windows of its input and their offsets."""
    module = step.module
    if isinstance(module, nn.Conv2d):
        g = geometry(module)
        # Padding 0: the window keeps every position the filters reach; the map's border is cut by the mask.
        lo, _ = input_window(module, lo, (x.shape[2], x.shape[3]))
        x = _full_conv_transpose(x.contiguous(memory_format=torch.channels_last), module.weight, g.stride, g.dilation)
        return _zero_outside(x, lo, step.in_shape), lo
    if isinstance(module, nn.ReLU):  # every window is the engine's own tensor: in place is safe
        return relu_rule(x, rule, lambda: _window_of(step.relu_mask(), image, lo, x.shape[2:]), in_place=True), lo
    if isinstance(module, nn.MaxPool2d):
        assert switch_offsets is not None, "the caller gives every max-pool its switch offsets"
        stride = geometry(module).stride
        b, c, h, w = x.shape
        h_out, w_out = switch_offsets.shape[1:3]
        new_lo, (new_h, new_w) = input_window(module, lo, (h, w))
        rows = (lo[0][:, None] + torch.arange(h, device=x.device)).clamp(0, h_out - 1)  # [B, h]
        cols = (lo[1][:, None] + torch.arange(w, device=x.device)).clamp(0, w_out - 1)  # [B, w]
        # Where each pooled value goes in the unpooled window: its pooling window's corner plus the switch's
        # place inside that window. Positions clamped at the map's edge hold zeros, so theirs are harmless.
        corner = (torch.arange(h, device=x.device)[:, None] * (stride[0] * new_w)
                  + torch.arange(w, device=x.device) * stride[1])  # [h, w]
        n_out = h_out * w_out
        where = (image[:, None, None] * n_out + rows[:, :, None] * w_out + cols[:, None, :]).flatten()
        target = _buffer(workspace, (step.name, "target"), (b, h * w, c), torch.long, x.device)
        torch.index_select(switch_offsets.view(-1, c), 0, where, out=target.view(-1, c))  # [B, h * w, C]
        target.view(b, h, w, c).add_(corner[None, :, :, None])
        flat = _buffer(workspace, (step.name, "unpooled"), (b, new_h * new_w, c), x.dtype, x.device).zero_()
        flat.scatter_add_(1, target, x.permute(0, 2, 3, 1).reshape(b, h * w, c))  # overlapping windows add up
        return flat.view(b, new_h, new_w, c).permute(0, 3, 1, 2), new_lo
    if isinstance(module, nn.BatchNorm2d):  # every window is the engine's own tensor: in place is safe
        return x.mul_(batch_norm_scale(module).view(1, -1, 1, 1)), lo
    return x, lo  # contrast normalisation and dropout are passed through


def _window_of(maps: torch.Tensor, image: torch.Tensor, lo, size) -> torch.Tensor:
    """Windows ``[B, C, h, w]`` of full maps ``maps [N, C, H, W]``: item ``b`` from image ``image[b]`` at offsets
    ``lo = (rows [B], cols [B])``. Positions outside the map are clamped to its edge (the windows hold zeros
    there, so what is read does not matter)."""
    rows = (lo[0][:, None] + torch.arange(size[0], device=maps.device)).clamp(0, maps.shape[2] - 1)  # [B, h]
    cols = (lo[1][:, None] + torch.arange(size[1], device=maps.device)).clamp(0, maps.shape[3] - 1)  # [B, w]
    channels = torch.arange(maps.shape[1], device=maps.device)
    return maps[image[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None],
                cols[:, None, None, :]]


def _buffer(workspace: dict[tuple, torch.Tensor], key: tuple, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    """A tensor of ``shape`` from ``workspace`` (the first chunk's, sliced for a smaller last chunk)."""
    buf = workspace.get(key)
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
        buf = workspace[key] = torch.empty(shape, dtype=dtype, device=device)
    return buf[: shape[0]]


def _switch_offsets(step: RecordedStep, window: tuple[int, int]) -> torch.Tensor:
    """``[N, H_out, W_out, C]``: each switch of a max-pool as a flat offset from its pooling window's corner,
    in an unpooled window of width ``window[1]``."""
    _, stride, padding, _ = geometry(step.module_as(nn.MaxPool2d))
    w_in = step.in_shape[3]
    switches = step.pool_switches().permute(0, 2, 3, 1)  # [N, H_out, W_out, C]
    h_out, w_out = switches.shape[1:3]
    top = (torch.arange(h_out, device=switches.device) * stride[0] - padding[0]).view(1, -1, 1, 1)
    left = (torch.arange(w_out, device=switches.device) * stride[1] - padding[1]).view(1, 1, -1, 1)
    return ((switches // w_in - top) * window[1] + (switches % w_in - left)).contiguous()


def _full_conv_transpose(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                         dilation: tuple[int, int]) -> torch.Tensor:
    """Transposed conv without padding: ``x [B, C_out, h, w]`` -> ``[B, C_in, (h-1)s + d(k-1) + 1, ...]``.

    Down to pixels (few output channels, stride > 1) the direct transposed conv runs far below the machine's
    speed; there it is computed as one stride-1 conv with ``s*s`` phases of the filter as extra output
    channels, interleaved back by a pixel shuffle (same sums, a few zero taps more)."""
    c_in, (kh, kw) = weight.shape[1], weight.shape[2:]
    s_h, s_w = stride
    if dilation != (1, 1) or stride == (1, 1) or s_h != s_w or c_in * s_h * s_w > 32:
        return F.conv_transpose2d(x, weight, None, stride, 0, 0, 1, dilation)
    ph, pw = -(-kh // s_h), -(-kw // s_w)  # taps per phase
    phases = weight.new_zeros((weight.shape[0], c_in, s_h, s_w, ph, pw))
    for a in range(s_h):
        for b in range(s_w):
            taps = weight[:, :, a::s_h, b::s_w]
            phases[:, :, a, b, : taps.shape[2], : taps.shape[3]] = taps
    # out[s*m + a] = sum_u x[m - u] * w[a + s*u]: a full correlation with the flipped phase filters.
    kernel = phases.reshape(weight.shape[0], c_in * s_h * s_w, ph, pw).transpose(0, 1).flip(-2, -1)
    y = F.pixel_shuffle(F.conv2d(x, kernel.contiguous(), padding=(ph - 1, pw - 1)), s_h)
    h, w = x.shape[2:]
    return y[:, :, : (h - 1) * s_h + kh, : (w - 1) * s_w + kw]


def _zero_outside(x: torch.Tensor, lo, shape) -> torch.Tensor:
    """Zero the positions of windows ``x [B, C, h, w]`` (offsets ``lo``) that lie outside a map of ``shape``."""
    inside = []
    for d in range(2):
        pos = lo[d][:, None] + torch.arange(x.shape[2 + d], device=x.device)  # [B, h or w]
        inside.append((pos >= 0) & (pos < shape[2 + d]))
    mask = (inside[0][:, :, None] & inside[1][:, None, :]).unsqueeze(1)  # [B, 1, h, w]
    return x.mul_(mask)


def _place(x: torch.Tensor, lo, out: torch.Tensor) -> None:
    """Write windows ``x [B, C, h, w]`` at offsets ``lo`` into full maps ``out [B, C, H, W]`` (zero elsewhere)."""
    b, c, h, w = x.shape
    height, width = out.shape[2:]
    rows = torch.arange(height, device=x.device) - lo[0][:, None]  # [B, H]: window row of each map row
    cols = torch.arange(width, device=x.device) - lo[1][:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # [B, H, W]
    source = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    flat = out.view(b, c, height * width)
    torch.gather(x.reshape(b, c, h * w), 2, source.view(b, 1, -1).expand(b, c, -1), out=flat)
    flat.mul_(inside.view(b, 1, -1))
