"""The deconvnet (Sec. 2.1): project a unit or a feature map of a conv layer back to pixel space.

One batched engine for any network whose forward applies its leaf modules in registration order up to
the chosen layer, with conv / ReLU / max-pool layers (plus normalisation and dropout, passed through):
ZFNet from ``zfexp.models``, torchvision's AlexNet and VGG. Going down from the chosen layer it repeats
(i) unpool with the switches recorded in the forward pass (overlapping windows add up, as the gradient of
max-pool does), (ii) rectify with a ReLU, (iii) filter with the transposed weights of the conv (no bias).

The ReLU step is the one place where the ways of projecting differ (Springenberg et al. 2015, Fig. 1), so the
engine takes it as ``rule``: ``"deconvnet"`` rectifies the signal coming down (the paper's), ``"guided"``
(guided backpropagation) also masks it by where the forward ReLU was active, ``"gradient"`` only masks it
(the plain gradient of the unit with respect to the image, up to the passed-through normalisations).

With ``mode="max"`` each projection starts from one unit, so at every layer on the way down it is non-zero
only inside that unit's receptive field there: a window of the same size for every unit. The engine then
carries just these windows (each with its own offset) instead of whole maps, which for the deep layers of a
224-pixel network does several times fewer multiply-adds for exactly the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from zfexp.errors import InvalidValueError

RULES = ("deconvnet", "guided", "gradient")
PASS_THROUGH = (nn.LocalResponseNorm, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)
SUPPORTED = (nn.Conv2d, nn.ReLU, nn.MaxPool2d) + PASS_THROUGH


@dataclass
class _Step:
    """One module of the forward prefix and what its inverse needs: input size, and pool switches."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...] = ()
    switches: torch.Tensor | None = None  # [N, C, H_out, W_out] flat argmax indices into H_in * W_in
    active: torch.Tensor | None = None  # [N, C, H, W] bool: where a ReLU's output was positive (guided, gradient)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def forward_prefix(model: nn.Module, layer: str) -> list[tuple[str, nn.Module]]:
    """The leaf modules from the input up to ``layer``'s ReLU, in forward order.

    ``layer`` names a ``Conv2d`` (``"conv3"`` for ZFNet, ``"features.8"`` for torchvision AlexNet); the
    prefix ends with the ReLU that follows it, so the projected activations are post-ReLU.
    """
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    names = [n for n, _ in leaves]
    convs = [n for n, m in leaves if isinstance(m, nn.Conv2d)]
    if layer not in convs:
        raise InvalidValueError(f"layer={layer!r} is not a conv layer of the model; valid: {', '.join(convs)}")
    end = names.index(layer)
    prefix = leaves[: end + 1]
    if end + 1 < len(leaves) and isinstance(leaves[end + 1][1], nn.ReLU):
        prefix.append(leaves[end + 1])
    for name, module in prefix:
        if not isinstance(module, SUPPORTED):
            raise InvalidValueError(f"the deconvnet cannot invert {type(module).__name__} at {name!r}; it supports "
                                    f"{', '.join(t.__name__ for t in SUPPORTED)} below the projected layer")
    return prefix


class DeconvNet:
    """Projects activations of a conv layer to pixel space with the deconvnet of Zeiler & Fergus.

    ``project(images, layer, channels, mode)`` works on ``images [N, C, H, W]`` and returns
    ``[N, K, C, H, W]`` for the ``K`` chosen channels, with no Python loop over channels: the K maps are
    carried as K copies in the batch (in ``mode="max"``, N x K receptive-field windows), in chunks of at
    most ``max_elements`` floats per intermediate tensor. The model is used in eval mode and not modified.
    """

    def __init__(self, model: nn.Module, max_elements: int = 2**24, windowed: bool | None = None,
                 rule: str = "deconvnet"):
        """``windowed``: carry receptive-field windows rather than whole maps in ``mode="max"``; ``None``
        picks whichever does fewer multiply-adds for the layer (whole maps win on small images).
        ``rule``: how the ReLUs are inverted, one of :data:`RULES` (see the module's docstring)."""
        if rule not in RULES:
            raise InvalidValueError(f"rule={rule!r}; valid: {', '.join(RULES)}")
        self.model = model
        self.rule = rule
        self.max_elements = int(max_elements)
        self.windowed = windowed

    @torch.no_grad()
    def forward_record(self, images: torch.Tensor, layer: str) -> tuple[torch.Tensor, list[_Step]]:
        """Run ``images`` up to ``layer``'s ReLU; return its output ``[N, C_l, H_l, W_l]`` and the steps."""
        steps: list[_Step] = []
        x = images
        was_training = self.model.training
        self.model.eval()
        try:
            for name, module in forward_prefix(self.model, layer):
                step = _Step(name, module, tuple(x.shape))
                if isinstance(module, nn.MaxPool2d):
                    x, step.switches = F.max_pool2d(x, module.kernel_size, module.stride, module.padding,
                                                    module.dilation, ceil_mode=module.ceil_mode, return_indices=True)
                elif isinstance(module, nn.ReLU):
                    x = F.relu(x)  # never in place: x may be the caller's tensor
                    if self.rule != "deconvnet":
                        step.active = x > 0
                else:
                    x = module(x)
                steps.append(step)
        finally:
            self.model.train(was_training)
        return x, steps

    def features(self, images: torch.Tensor, layer: str) -> torch.Tensor:
        """Post-ReLU activations of ``layer``: ``[N, C_l, H_l, W_l]``."""
        return self.forward_record(images, layer)[0]

    @torch.no_grad()
    def features_of(self, images: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        """Post-ReLU activations of several conv layers from one forward pass: ``{layer: [N, C_l, H_l, W_l]}``."""
        prefixes = {layer: forward_prefix(self.model, layer) for layer in layers}
        deepest = max(prefixes.values(), key=len)
        ends = {len(prefix) - 1: layer for layer, prefix in prefixes.items()}  # last module of each prefix
        out, x = {}, images
        was_training = self.model.training
        self.model.eval()
        try:
            for i, (_name, module) in enumerate(deepest):
                x = F.relu(x) if isinstance(module, nn.ReLU) else module(x)
                if i in ends:
                    out[ends[i]] = x
        finally:
            self.model.train(was_training)
        return out

    @torch.no_grad()
    def project(self, images: torch.Tensor, layer: str, channels: list[int] | torch.Tensor | None = None,
                mode: str = "max") -> torch.Tensor:
        """Deconvnet projections of ``channels`` of ``layer`` for each image: ``[N, K, C, H, W]``.

        ``mode="max"`` keeps each map's single strongest activation, ``mode="map"`` the whole map; every other
        activation of the layer is zeroed before going down.
        """
        if mode not in ("max", "map"):
            raise InvalidValueError(f"mode={mode!r}: valid values are 'max' and 'map'")
        acts, steps = self.forward_record(images, layer)
        n, c_l = acts.shape[:2]
        chan = torch.arange(c_l) if channels is None else torch.as_tensor(channels, dtype=torch.long).flatten()
        if chan.numel() and (chan.min() < 0 or chan.max() >= c_l):
            raise InvalidValueError(f"channels must lie in 0..{c_l - 1} for layer {layer!r}; got {chan.tolist()}")
        chan = chan.to(acts.device)
        selected = acts[:, chan]  # [N, K, H_l, W_l]
        k = chan.numel()
        if mode == "max" and self._use_windows(steps):
            value, where = selected.flatten(2).max(2)  # [N, K]: each map's strongest unit, item n * K + k
            image = torch.arange(n, device=acts.device).repeat_interleave(k)
            out = self._down_windowed(image, chan.repeat(n), where.flatten(), value.flatten(), steps, images,
                                      acts.shape[-1])
            return out.view(n, k, *images.shape[1:])
        if mode == "max":
            selected = _keep_max(selected)
        out = images.new_zeros((n, k, *images.shape[1:]))
        chunk = max(1, self.max_elements // max(1, n * self._largest_per_map(steps)))
        for start in range(0, k, chunk):
            idx = slice(start, start + chunk)
            out[:, idx] = self._down(selected[:, idx], chan[idx], steps)
        return out

    @torch.no_grad()
    def project_units(self, images: torch.Tensor, layer: str, channels: list[int] | torch.Tensor,
                      mode: str = "max") -> torch.Tensor:
        """Pairwise projections: channel ``channels[i]`` of image ``i``, ``[N, C, H, W]``. This is what a
        top-k search needs (each map's strongest units sit in different images)."""
        if mode not in ("max", "map"):
            raise InvalidValueError(f"mode={mode!r}: valid values are 'max' and 'map'")
        acts, steps = self.forward_record(images, layer)
        chan = torch.as_tensor(channels, dtype=torch.long, device=acts.device).flatten()
        if chan.numel() != acts.shape[0]:
            raise InvalidValueError(f"project_units needs one channel per image: {acts.shape[0]} images, "
                                    f"{chan.numel()} channels")
        if chan.numel() and (chan.min() < 0 or chan.max() >= acts.shape[1]):
            raise InvalidValueError(f"channels must lie in 0..{acts.shape[1] - 1} for layer {layer!r}; got "
                                    f"{chan.tolist()}")
        selected = acts[torch.arange(acts.shape[0], device=acts.device), chan].unsqueeze(0)  # [1, N, H, W]
        if mode == "max" and self._use_windows(steps):
            value, where = selected[0].flatten(1).max(1)
            return self._down_windowed(torch.arange(len(chan), device=acts.device), chan, where, value, steps, images,
                                       acts.shape[-1])
        if mode == "max":
            selected = _keep_max(selected)
        # Carry the N pairs as N groups of one image: the same grouped transposed conv as in project().
        return self._down(selected, chan, steps, paired=True)[0]

    def _use_windows(self, steps: list[_Step]) -> bool:
        if self.windowed is not None:
            return self.windowed
        # Multiply-adds of the transposed convs ~ their output area x filter size, either way; the top conv
        # applies one filter per unit (whole maps) or is a copy of it (windows).
        top, whole, windows = _top_conv(steps), 0, 0
        for i, (step, size) in enumerate(zip(steps, _window_sizes(steps))):
            if isinstance(step.module, nn.Conv2d):
                weight = step.module.weight
                per_position = weight[0].numel() if i == top else weight.numel()
                whole += step.in_shape[2] * step.in_shape[3] * per_position
                windows += 0 if i == top else size[0] * size[1] * per_position
        return windows < whole

    @torch.no_grad()
    def _down_windowed(self, image: torch.Tensor, chan: torch.Tensor, where: torch.Tensor, value: torch.Tensor,
                       steps: list[_Step], images: torch.Tensor, width: int) -> torch.Tensor:
        """Project single units: item ``b`` is unit ``where[b]`` (flat position in the map) of channel
        ``chan[b]`` of image ``image[b]``, with activation ``value[b]``. Returns pixels ``[B, C, H, W]``.

        Every intermediate is a window ``[B, C_i, h_i, w_i]`` of the full map (channels-last in memory, which
        the CPU convolutions run much faster on), item ``b``'s window starting at its own offset; positions
        outside the map are kept at zero so that the result is exact."""
        row, col = where // width, where % width
        out = images.new_empty((len(image), *images.shape[1:]))
        sizes = _window_sizes(steps)
        top = _top_conv(steps)
        offsets = {i: _switch_offsets(steps[i], sizes[i]) for i in range(top)
                   if isinstance(steps[i].module, nn.MaxPool2d)}
        per_item = max(h * w * step.in_shape[1] for step, (h, w) in zip(steps, sizes))
        per_item = max(per_item, torch.Size(images.shape[1:]).numel())
        chunk = max(1, self.max_elements // per_item)
        # Unpooling buffers are reused from chunk to chunk: zeroing memory already mapped is several times
        # cheaper than allocating a fresh large tensor each time.
        workspace: dict[tuple, torch.Tensor] = {}
        for start in range(0, len(image), chunk):
            idx = slice(start, start + chunk)
            x, lo = self._top_windows(steps[top], chan[idx], row[idx], col[idx], value[idx])
            for i in range(top - 1, -1, -1):
                x, lo = _invert_window(steps[i], x, lo, image[idx], offsets.get(i), workspace, self.rule)
            _place(x, lo, out[idx])
        return out

    @staticmethod
    def _top_windows(step: _Step, chan, row, col, value):
        """The chosen units through their transposed conv: each is its own filter scaled by its value (spread
        by the dilation), a copy rather than a convolution. ``[B, C_in, kh', kw']`` and the window offsets."""
        conv: nn.Conv2d = step.module
        _check_conv(step)
        b, (kh, kw) = len(chan), conv.kernel_size
        dilation, stride, padding = _pair(conv.dilation), _pair(conv.stride), _pair(conv.padding)
        x = conv.weight.new_zeros((b, conv.in_channels, (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1))
        x[:, :, :: dilation[0], :: dilation[1]] = conv.weight[chan] * value.view(b, 1, 1, 1)
        lo = (row * stride[0] - padding[0], col * stride[1] - padding[1])  # window offset in the conv's input
        return _zero_outside(x, lo, step.in_shape), lo

    @staticmethod
    def _largest_per_map(steps: list[_Step]) -> int:
        sizes = [torch.Size(s.in_shape[1:]).numel() for s in steps]
        return max(sizes) if sizes else 1

    def _down(self, selected: torch.Tensor, chan: torch.Tensor, steps: list[_Step], paired: bool = False,
              ) -> torch.Tensor:
        """``selected [N, K, H_l, W_l]`` (the kept activations) -> pixels ``[N, K, C, H, W]``. ``paired``: the
        input is ``[1, N, H_l, W_l]``, map ``i`` belonging to image ``i``; the result is ``[1, N, C, H, W]``."""
        n, k = selected.shape[:2]
        top = _top_conv(steps)
        conv_step = steps[top]
        # The chosen layer's transposed filter, one group per chosen channel: every other channel is zero,
        # so only the K filters that matter are applied and the C_l-wide zero tensor is never built.
        weight = conv_step.module.weight[chan]  # [K, C_in, kh, kw]
        x = self._conv_transpose(selected, weight, conv_step, groups=k)  # [N, K * C_in, H, W]
        x = x.view(n * k, -1, *x.shape[2:])
        if paired:  # from here on the pairs are a batch of k images with one map each
            n, k = k, 1
        for step in reversed(steps[:top]):
            x = self._invert(step, x, n, k, self.rule)
        return x.view(1, n, *x.shape[1:]) if paired else x.view(n, k, *x.shape[1:])

    @staticmethod
    def _conv_transpose(x: torch.Tensor, weight: torch.Tensor, step: _Step, groups: int = 1) -> torch.Tensor:
        conv: nn.Conv2d = step.module
        _check_conv(step)
        stride, padding, dilation = _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
        kernel = weight.shape[-2:]
        out_pad = []
        for d in range(2):
            natural = (x.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (kernel[d] - 1) + 1
            out_pad.append(step.in_shape[2 + d] - natural)
        return F.conv_transpose2d(x, weight, None, stride, padding, tuple(out_pad), groups, dilation)

    @staticmethod
    def _invert(step: _Step, x: torch.Tensor, n: int, k: int, rule: str) -> torch.Tensor:
        """One module of the way down, on ``x [N * K, C, H, W]``."""
        module = step.module
        if isinstance(module, nn.Conv2d):
            return DeconvNet._conv_transpose(x, module.weight, step)
        if isinstance(module, nn.ReLU):
            if rule != "gradient":
                x = F.relu(x)
            if rule == "deconvnet":
                return x
            return (x.view(n, k, *x.shape[1:]) * step.active.unsqueeze(1)).view_as(x)
        if isinstance(module, nn.MaxPool2d):
            # Unpool: each pooled value goes back to its switch; where windows overlap and share a switch,
            # their values add (scatter_add), which is also what the max-pool gradient does.
            _, c, h_in, w_in = step.in_shape
            switches = step.switches.flatten(2).unsqueeze(1).expand(n, k, c, -1)  # a view: no copy per map
            flat = x.new_zeros((n, k, c, h_in * w_in))
            flat.scatter_add_(3, switches, x.reshape(n, k, c, -1))
            return flat.view(n * k, c, h_in, w_in)
        return x  # normalisation and dropout are passed through, as in the paper


def _check_conv(step: _Step) -> None:
    conv: nn.Conv2d = step.module
    if conv.groups != 1:
        raise InvalidValueError(f"grouped convolution at {step.name!r} is not supported by the deconvnet")
    if isinstance(conv.padding, str):
        raise InvalidValueError(f"padding={conv.padding!r} at {step.name!r}: the deconvnet needs numeric padding")


def _pool_geometry(pool: nn.MaxPool2d):
    return (_pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding),
            _pair(pool.dilation))


def _top_conv(steps: list[_Step]) -> int:
    return next(i for i in range(len(steps) - 1, -1, -1) if isinstance(steps[i].module, nn.Conv2d))


def _window_sizes(steps: list[_Step]) -> list[tuple[int, int]]:
    """Per step, the ``(h, w)`` of the window of its input that one unit of the chosen layer can reach on the
    way down (the unit's receptive field at that depth, unclipped); ``(1, 1)`` above the top conv."""
    top = _top_conv(steps)
    sizes = [(1, 1)] * len(steps)
    size = (1, 1)
    for i in range(top, -1, -1):
        module = steps[i].module
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            if isinstance(module, nn.Conv2d):
                kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
            else:
                kernel, stride, _, dilation = _pool_geometry(module)
            size = tuple((size[d] - 1) * _pair(stride)[d] + _pair(dilation)[d] * (_pair(kernel)[d] - 1) + 1
                         for d in range(2))
        sizes[i] = size
    return sizes


def _invert_window(step: _Step, x: torch.Tensor, lo, image: torch.Tensor, switch_offsets: torch.Tensor | None,
                   workspace: dict[tuple, torch.Tensor], rule: str = "deconvnet"):
    """One module of the way down on windows ``x [B, C, h, w]`` at offsets ``lo = (rows [B], cols [B])`` in
    the module's output; returns the windows of its input and their offsets."""
    module = step.module
    if isinstance(module, nn.Conv2d):
        _check_conv(step)
        stride, padding, dilation = _pair(module.stride), _pair(module.padding), _pair(module.dilation)
        # Padding 0: the window keeps every position the filters reach; the map's border is cut by the mask.
        x = _full_conv_transpose(x.contiguous(memory_format=torch.channels_last), module.weight, stride, dilation)
        lo = tuple(lo[d] * stride[d] - padding[d] for d in range(2))
        return _zero_outside(x, lo, step.in_shape), lo
    if isinstance(module, nn.ReLU):  # every window is the engine's own tensor: in place is safe
        if rule != "gradient":
            x.relu_()
        if rule != "deconvnet":
            x.mul_(_window_of(step.active, image, lo, x.shape[2:]))
        return x, lo
    if isinstance(module, nn.MaxPool2d):
        kernel, stride, padding, dilation = _pool_geometry(module)
        b, c, h, w = x.shape
        h_out, w_out = switch_offsets.shape[1:3]
        new_h = (h - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
        new_w = (w - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
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
        new_lo = tuple(lo[d] * stride[d] - padding[d] for d in range(2))
        return flat.view(b, new_h, new_w, c).permute(0, 3, 1, 2), new_lo
    return x, lo  # normalisation and dropout are passed through


def _window_of(maps: torch.Tensor, image: torch.Tensor, lo, size) -> torch.Tensor:
    """Windows ``[B, C, h, w]`` of full maps ``maps [N, C, H, W]``: item ``b`` from image ``image[b]`` at offsets
    ``lo = (rows [B], cols [B])``. Positions outside the map are clamped to its edge (the windows hold zeros
    there, so what is read does not matter)."""
    rows = (lo[0][:, None] + torch.arange(size[0], device=maps.device)).clamp(0, maps.shape[2] - 1)  # [B, h]
    cols = (lo[1][:, None] + torch.arange(size[1], device=maps.device)).clamp(0, maps.shape[3] - 1)  # [B, w]
    channels = torch.arange(maps.shape[1], device=maps.device)
    return maps[image[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def _buffer(workspace: dict[tuple, torch.Tensor], key: tuple, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    """A tensor of ``shape`` from ``workspace`` (the first chunk's, sliced for a smaller last chunk)."""
    buf = workspace.get(key)
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
        buf = workspace[key] = torch.empty(shape, dtype=dtype, device=device)
    return buf[: shape[0]]


def _switch_offsets(step: _Step, window: tuple[int, int]) -> torch.Tensor:
    """``[N, H_out, W_out, C]``: each switch of a max-pool as a flat offset from its pooling window's corner,
    in an unpooled window of width ``window[1]``."""
    kernel, stride, padding, _ = _pool_geometry(step.module)
    w_in = step.in_shape[3]
    switches = step.switches.permute(0, 2, 3, 1)  # [N, H_out, W_out, C]
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


def _keep_max(selected: torch.Tensor) -> torch.Tensor:
    """Zero all but the largest value of each map of ``[N, K, H, W]``."""
    flat = selected.flatten(2)
    keep = torch.zeros_like(flat).scatter_(2, flat.argmax(2, keepdim=True), 1.0)
    return (flat * keep).view_as(selected)


def receptive_field(model: nn.Module, layer: str, position: tuple[int, int], image_size: tuple[int, int] | int,
                    ) -> tuple[int, int, int, int]:
    """Input-pixel box ``(top, left, bottom, right)`` (inclusive, clipped to the image) seen by the unit at
    ``position = (row, col)`` of ``layer``'s output, from the conv / pool geometry of the forward prefix."""
    height, width = _pair(image_size)
    lo, hi = list(position), list(position)
    for _name, module in reversed(forward_prefix(model, layer)):
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
            padding, dilation = _pair(module.padding), _pair(module.dilation)
            for d in range(2):
                lo[d] = lo[d] * stride[d] - padding[d]
                hi[d] = hi[d] * stride[d] - padding[d] + dilation[d] * (kernel[d] - 1)
    return max(lo[0], 0), max(lo[1], 0), min(hi[0], height - 1), min(hi[1], width - 1)


def receptive_field_size(model: nn.Module, layer: str) -> int:
    """Side of the (unclipped) input box one unit of ``layer`` sees: ``1 + sum (k - 1) * dilation * jump``."""
    size, jump = 1, 1
    for _name, module in forward_prefix(model, layer):
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            kernel, stride = _pair(module.kernel_size)[0], _pair(module.stride or module.kernel_size)[0]
            size += (kernel - 1) * _pair(module.dilation)[0] * jump
            jump *= stride
    return size
