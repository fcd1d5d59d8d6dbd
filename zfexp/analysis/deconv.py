"""The deconvnet (Sec. 2.1): project a unit or a feature map of a conv layer back to pixel space.

One batched engine for any network whose forward applies its leaf modules in registration order up to
the chosen layer, with conv / ReLU / max-pool layers (plus normalisation and dropout, passed through):
ZFNet from ``zfexp.models``, torchvision's AlexNet and VGG. Going down from the chosen layer it repeats
(i) unpool with the switches recorded in the forward pass (overlapping windows add up, as the gradient of
max-pool does), (ii) rectify with a ReLU, (iii) filter with the transposed weights of the conv (no bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

PASS_THROUGH = (nn.LocalResponseNorm, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)
SUPPORTED = (nn.Conv2d, nn.ReLU, nn.MaxPool2d) + PASS_THROUGH


@dataclass
class _Step:
    """One module of the forward prefix and what its inverse needs: input size, and pool switches."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...] = ()
    switches: torch.Tensor | None = None  # [N, C, H_out, W_out] flat argmax indices into H_in * W_in


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
        raise ValueError(f"layer={layer!r} is not a conv layer of the model; valid: {', '.join(convs)}")
    end = names.index(layer)
    prefix = leaves[: end + 1]
    if end + 1 < len(leaves) and isinstance(leaves[end + 1][1], nn.ReLU):
        prefix.append(leaves[end + 1])
    for name, module in prefix:
        if not isinstance(module, SUPPORTED):
            raise ValueError(f"the deconvnet cannot invert {type(module).__name__} at {name!r}; it supports "
                             f"{', '.join(t.__name__ for t in SUPPORTED)} below the projected layer")
    return prefix


class DeconvNet:
    """Projects activations of a conv layer to pixel space with the deconvnet of Zeiler & Fergus.

    ``project(images, layer, channels, mode)`` works on ``images [N, C, H, W]`` and returns
    ``[N, K, C, H, W]`` for the ``K`` chosen channels, with no Python loop over channels: the K maps are
    carried as K copies in the batch, in chunks of at most ``max_elements`` floats per intermediate tensor.
    The model is used in eval mode and not modified.
    """

    def __init__(self, model: nn.Module, max_elements: int = 2**24):
        self.model = model
        self.max_elements = int(max_elements)

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
            raise ValueError(f"mode={mode!r}: valid values are 'max' and 'map'")
        acts, steps = self.forward_record(images, layer)
        n, c_l = acts.shape[:2]
        chan = torch.arange(c_l) if channels is None else torch.as_tensor(channels, dtype=torch.long).flatten()
        if chan.numel() and (chan.min() < 0 or chan.max() >= c_l):
            raise ValueError(f"channels must lie in 0..{c_l - 1} for layer {layer!r}; got {chan.tolist()}")
        chan = chan.to(acts.device)
        selected = acts[:, chan]  # [N, K, H_l, W_l]
        if mode == "max":
            selected = _keep_max(selected)
        k = chan.numel()
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
            raise ValueError(f"mode={mode!r}: valid values are 'max' and 'map'")
        acts, steps = self.forward_record(images, layer)
        chan = torch.as_tensor(channels, dtype=torch.long, device=acts.device).flatten()
        if chan.numel() != acts.shape[0]:
            raise ValueError(f"project_units needs one channel per image: {acts.shape[0]} images, {chan.numel()} channels")
        if chan.numel() and (chan.min() < 0 or chan.max() >= acts.shape[1]):
            raise ValueError(f"channels must lie in 0..{acts.shape[1] - 1} for layer {layer!r}; got {chan.tolist()}")
        selected = acts[torch.arange(acts.shape[0], device=acts.device), chan].unsqueeze(0)  # [1, N, H, W]
        if mode == "max":
            selected = _keep_max(selected)
        # Carry the N pairs as N groups of one image: the same grouped transposed conv as in project().
        return self._down(selected, chan, steps, paired=True)[0]

    @staticmethod
    def _largest_per_map(steps: list[_Step]) -> int:
        sizes = [torch.Size(s.in_shape[1:]).numel() for s in steps]
        return max(sizes) if sizes else 1

    def _down(self, selected: torch.Tensor, chan: torch.Tensor, steps: list[_Step], paired: bool = False,
              ) -> torch.Tensor:
        """``selected [N, K, H_l, W_l]`` (the kept activations) -> pixels ``[N, K, C, H, W]``. ``paired``: the
        input is ``[1, N, H_l, W_l]``, map ``i`` belonging to image ``i``; the result is ``[1, N, C, H, W]``."""
        n, k = selected.shape[:2]
        top = next(i for i in range(len(steps) - 1, -1, -1) if isinstance(steps[i].module, nn.Conv2d))
        conv_step = steps[top]
        # The chosen layer's transposed filter, one group per chosen channel: every other channel is zero,
        # so only the K filters that matter are applied and the C_l-wide zero tensor is never built.
        weight = conv_step.module.weight[chan]  # [K, C_in, kh, kw]
        x = self._conv_transpose(selected, weight, conv_step, groups=k)  # [N, K * C_in, H, W]
        x = x.view(n * k, -1, *x.shape[2:])
        if paired:  # from here on the pairs are a batch of k images with one map each
            n, k = k, 1
        for step in reversed(steps[:top]):
            x = self._invert(step, x, n, k)
        return x.view(1, n, *x.shape[1:]) if paired else x.view(n, k, *x.shape[1:])

    @staticmethod
    def _conv_transpose(x: torch.Tensor, weight: torch.Tensor, step: _Step, groups: int = 1) -> torch.Tensor:
        conv: nn.Conv2d = step.module
        if conv.groups != 1:
            raise ValueError(f"grouped convolution at {step.name!r} is not supported by the deconvnet")
        if isinstance(conv.padding, str):
            raise ValueError(f"padding={conv.padding!r} at {step.name!r}: the deconvnet needs numeric padding")
        stride, padding, dilation = _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
        kernel = weight.shape[-2:]
        out_pad = []
        for d in range(2):
            natural = (x.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (kernel[d] - 1) + 1
            out_pad.append(step.in_shape[2 + d] - natural)
        return F.conv_transpose2d(x, weight, None, stride, padding, tuple(out_pad), groups, dilation)

    @staticmethod
    def _invert(step: _Step, x: torch.Tensor, n: int, k: int) -> torch.Tensor:
        """One module of the way down, on ``x [N * K, C, H, W]``."""
        module = step.module
        if isinstance(module, nn.Conv2d):
            return DeconvNet._conv_transpose(x, module.weight, step)
        if isinstance(module, nn.ReLU):
            return F.relu(x)
        if isinstance(module, nn.MaxPool2d):
            # Unpool: each pooled value goes back to its switch; where windows overlap and share a switch,
            # their values add (scatter_add), which is also what the max-pool gradient does.
            _, c, h_in, w_in = step.in_shape
            switches = step.switches.flatten(2).unsqueeze(1).expand(n, k, c, -1)  # a view: no copy per map
            flat = x.new_zeros((n, k, c, h_in * w_in))
            flat.scatter_add_(3, switches, x.reshape(n, k, c, -1))
            return flat.view(n * k, c, h_in, w_in)
        return x  # normalisation and dropout are passed through, as in the paper


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
