"""The deconvnet (Sec. 2.1): project a unit or a feature map of a conv layer (or of a block) back to pixel space.

One batched engine for any network. Going down from the chosen layer it repeats (i) unpool with the switches
recorded in the forward pass (overlapping windows add up, as the gradient of max-pool does), (ii) rectify with a
ReLU, (iii) filter with the transposed weights of the conv (no bias); batch norm in eval mode scales each channel
(its true backward: as if folded into the filters before it), contrast normalisation and dropout are passed
through. Where the network is a chain of such modules up to the layer (ZFNet from ``zfexp.models``,
torchvision's AlexNet and VGG) this module runs those steps itself; anywhere else (residual additions,
concatenations, functional ReLUs, average pools) the way down is autograd's backward of the network's own
forward with the rule's ReLUs (:mod:`~zfexp.analysis.deconv_graph`): the same numbers where both apply.

The ReLU step is the one place where the ways of projecting differ (Springenberg et al. 2015, Fig. 1), so the
engine takes it as ``rule``: ``"deconvnet"`` rectifies the signal coming down (the paper's), ``"guided"``
(guided backpropagation) also masks it by where the forward ReLU was active, ``"gradient"`` only masks it
(the plain gradient of the unit with respect to the image, up to the passed-through normalisations).

This module is the algorithm as the paper states it, on whole maps. With ``mode="max"`` (single units) it
hands the way down to ``deconv_windows``, which carries each unit's receptive-field window only: the same
result with several times fewer multiply-adds on a 224-pixel network.
"""


from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zfexp.analysis.deconv_graph import keep_max, project_graph, project_units_graph
from zfexp.analysis.deconv_record import (
    RecordedStep,
    batch_norm_scale,
    chain_prefix,
    check_projectable,
    record_forward,
    scale_above_conv,
    top_conv,
)
from zfexp.analysis.deconv_windows import project_unit_windows, windows_pay_off
from zfexp.analysis.geometry import geometry
from zfexp.analysis.network import RULES, relu_rule
from zfexp.checks import one_of
from zfexp.errors import InvalidValueError


class DeconvNet:
    """Projects activations of a conv layer to pixel space with the deconvnet of Zeiler & Fergus.

    ``project(images, layer, channels, mode)`` works on ``images [N, C, H, W]`` and returns
    ``[N, K, C, H, W]`` for the ``K`` chosen channels, with no Python loop over channels: the K maps are
    carried as K copies in the batch (in ``mode="max"``, N x K receptive-field windows), in chunks of at
    most ``max_elements`` floats per intermediate tensor (along a chain of modules) or in all the tensors of
    one chunk's backward (any other network: bounded by every tensor of the forward, so a DenseNet's
    concatenations fit too). The model is used in eval mode and not modified.
    """

    def __init__(self, model: nn.Module, max_elements: int = 2**24, windowed: bool | None = None,
                 rule: str = "deconvnet"):
        """``windowed``: carry receptive-field windows rather than whole maps in ``mode="max"``; ``None``
        picks whichever does fewer multiply-adds for the layer (whole maps win on small images).
        ``rule``: how the ReLUs are inverted, one of :data:`RULES` (see the module's docstring)."""
        one_of("rule", rule, RULES)
        self.model = model
        self.rule = rule
        self.max_elements = int(max_elements)
        self.windowed = windowed

    def forward_record(self, images: torch.Tensor, layer: str) -> tuple[torch.Tensor, list[RecordedStep]] | None:
        """Along a chain of modules: run ``images`` up to ``layer``'s ReLU; its output ``[N, C_l, H_l, W_l]`` and
        the steps. ``None`` for a network that is not such a chain."""
        prefix = chain_prefix(self.model, layer, images)
        if prefix is None:
            return None
        return record_forward(prefix, self.model, images, keep_active=self.rule != "deconvnet")

    @torch.no_grad()
    def project(self, images: torch.Tensor, layer: str, channels: list[int] | torch.Tensor | None = None,
                mode: str = "max") -> torch.Tensor:
        """Deconvnet projections of ``channels`` of ``layer`` for each image: ``[N, K, C, H, W]``.

        ``mode="max"`` keeps each map's single strongest activation, ``mode="map"`` the whole map; every other
        activation of the layer is zeroed before going down. The activations go down as they are (the paper's
        definition): a conv's after its ReLU are never negative; a block's output can be, and the rules
        rectify on the way down, so a negative unit's picture is not the positive one's turned over.
        """
        one_of("mode", mode, ("max", "map"))
        check_projectable(self.model, layer)
        recorded = self.forward_record(images, layer)
        if recorded is None:
            return project_graph(self.model, images, layer, channels, mode, self.rule, self.max_elements)
        acts, steps = recorded
        n, c_l = acts.shape[:2]
        chan = torch.arange(c_l) if channels is None else torch.as_tensor(channels, dtype=torch.long).flatten()
        if chan.numel() and (chan.min() < 0 or chan.max() >= c_l):
            raise InvalidValueError(f"channels must lie in 0..{c_l - 1} for layer {layer!r}; got {chan.tolist()}")
        chan = chan.to(acts.device)
        selected = acts[:, chan]  # [N, K, H_l, W_l]
        k = chan.numel()
        scale = scale_above_conv(steps)[chan]  # [K]: the batch norm between the conv and its ReLU
        if mode == "max" and self._use_windows(steps):
            value, where = selected.flatten(2).max(2)  # [N, K]: each map's strongest unit, item n * K + k
            image = torch.arange(n, device=acts.device).repeat_interleave(k)
            out = project_unit_windows(steps, image, chan.repeat(n), where.flatten(), (value * scale).flatten(),
                                       images, acts.shape[-1], self.max_elements, self.rule)
            return out.reshape(n, k, *images.shape[1:])
        if mode == "max":
            selected = keep_max(selected)
        selected = selected * scale.view(1, -1, 1, 1)
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
        one_of("mode", mode, ("max", "map"))
        check_projectable(self.model, layer)
        recorded = self.forward_record(images, layer)
        if recorded is None:
            return project_units_graph(self.model, images, layer, torch.as_tensor(channels), mode, self.rule)
        acts, steps = recorded
        chan = torch.as_tensor(channels, dtype=torch.long, device=acts.device).flatten()
        if chan.numel() != acts.shape[0]:
            raise InvalidValueError(f"project_units needs one channel per image: {acts.shape[0]} images, "
                                    f"{chan.numel()} channels")
        if chan.numel() and (chan.min() < 0 or chan.max() >= acts.shape[1]):
            raise InvalidValueError(f"channels must lie in 0..{acts.shape[1] - 1} for layer {layer!r}; got "
                                    f"{chan.tolist()}")
        selected = acts[torch.arange(acts.shape[0], device=acts.device), chan].unsqueeze(0)  # [1, N, H, W]
        scale = scale_above_conv(steps)[chan]  # [N]
        if mode == "max" and self._use_windows(steps):
            value, where = selected[0].flatten(1).max(1)
            return project_unit_windows(steps, torch.arange(len(chan), device=acts.device), chan, where,
                                        value * scale, images, acts.shape[-1], self.max_elements, self.rule)
        if mode == "max":
            selected = keep_max(selected)
        selected = selected * scale.view(1, -1, 1, 1)
        # Carry the N pairs as N groups of one image: the same grouped transposed conv as in project().
        return self._down(selected, chan, steps, paired=True)[0]

    def _use_windows(self, steps: list[RecordedStep]) -> bool:
        return windows_pay_off(steps) if self.windowed is None else self.windowed

    @staticmethod
    def _largest_per_map(steps: list[RecordedStep]) -> int:
        sizes = [torch.Size(s.in_shape[1:]).numel() for s in steps]
        return max(sizes) if sizes else 1

    def _down(self, selected: torch.Tensor, chan: torch.Tensor, steps: list[RecordedStep], paired: bool = False,
              ) -> torch.Tensor:
        """``selected [N, K, H_l, W_l]`` (the kept activations) -> pixels ``[N, K, C, H, W]``. ``paired``: the
        input is ``[1, N, H_l, W_l]``, map ``i`` belonging to image ``i``; the result is ``[1, N, C, H, W]``."""
        n, k = selected.shape[:2]
        top = top_conv(steps)
        conv_step = steps[top]
        # The chosen layer's transposed filter, one group per chosen channel: every other channel is zero,
        # so only the K filters that matter are applied and the C_l-wide zero tensor is never built.
        weight = conv_step.module_as(nn.Conv2d).weight[chan]  # [K, C_in, kh, kw]
        x = self._conv_transpose(selected, weight, conv_step, groups=k)  # [N, K * C_in, H, W]
        # reshape, not view: a network kept channels-last (as the GPU path trains it) gives outputs in that
        # layout whatever the images' layout, and regrouping channels then needs a copy.
        x = x.reshape(n * k, -1, *x.shape[2:])
        if paired:  # from here on the pairs are a batch of k images with one map each
            n, k = k, 1
        for step in reversed(steps[:top]):
            x = self._invert(step, x, n, k, self.rule)
        return x.reshape(1, n, *x.shape[1:]) if paired else x.reshape(n, k, *x.shape[1:])

    @staticmethod
    def _conv_transpose(x: torch.Tensor, weight: torch.Tensor, step: RecordedStep, groups: int = 1) -> torch.Tensor:
        _, stride, padding, dilation = geometry(step.module_as(nn.Conv2d))
        kernel = weight.shape[-2:]
        out_pad = []
        for d in range(2):
            natural = (x.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (kernel[d] - 1) + 1
            out_pad.append(step.in_shape[2 + d] - natural)
        return F.conv_transpose2d(x, weight, None, stride, padding, tuple(out_pad), groups, dilation)

    @staticmethod
    def _invert(step: RecordedStep, x: torch.Tensor, n: int, k: int, rule: str) -> torch.Tensor:
        """One module of the way down, on ``x [N * K, C, H, W]``."""
        module = step.module
        if isinstance(module, nn.Conv2d):
            return DeconvNet._conv_transpose(x, module.weight, step)
        if isinstance(module, nn.ReLU):  # the forward's mask [N, C, H, W] over the K maps of each image
            down = relu_rule(x.reshape(n, k, *x.shape[1:]), rule, lambda: step.relu_mask().unsqueeze(1))
            return down.reshape(x.shape)
        if isinstance(module, nn.MaxPool2d):
            # Unpool: each pooled value goes back to its switch; where windows overlap and share a switch,
            # their values add (scatter_add), which is also what the max-pool gradient does.
            _, c, h_in, w_in = step.in_shape
            switches = step.pool_switches().flatten(2).unsqueeze(1).expand(n, k, c, -1)  # a view: no copy per map
            flat = x.new_zeros((n, k, c, h_in * w_in))
            flat.scatter_add_(3, switches, x.reshape(n, k, c, -1))
            return flat.view(n * k, c, h_in, w_in)
        if isinstance(module, nn.BatchNorm2d):
            return x * batch_norm_scale(module).view(1, -1, 1, 1)
        return x  # contrast normalisation and dropout are passed through, as in the paper

