"""Filter renormalisation (Sec. 3): "we renormalize each filter in the convolutional layers whose RMS
value exceeds a fixed radius of 1e-1 to this fixed radius"; and the filters' health that Fig. 6 looks at (their
RMS, and the dead ones: never active)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from zfexp.analysis.activations import layer_activations
from zfexp.analysis.network import invalid_layer
from zfexp.errors import InvalidValueError


def conv_layers(model: nn.Module, layers: Iterable[str] | None = None, key: str | None = None,
                ) -> dict[str, nn.Conv2d]:
    """The model's ``Conv2d`` modules by name; ``layers`` selects some by ``get_submodule`` name (one that is not
    a conv is an error naming the config ``key`` that gave it)."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if layers is None:
        return convs
    chosen = {}
    for name in layers:
        if name not in convs:
            raise invalid_layer(model, name, key=key)
        chosen[name] = convs[name]
    return chosen


def filter_rms(weight: torch.Tensor) -> torch.Tensor:
    """RMS of each filter: ``[out, in, kh, kw]`` weights -> ``[out]``, ``sqrt(mean(w**2))`` over a filter."""
    return weight.detach().pow(2).flatten(1).mean(1).sqrt()


@torch.no_grad()
def filter_statistics(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Fig. 6's measures of every conv layer, from one forward of ``images [N, C, H, W]``:
    ``filters/dead_frac/<conv>``, the fraction of its filters never active (no positive output after its ReLU
    on any image), and ``filters/rms_mean/<conv>``, ``filters/rms_max/<conv>`` (:func:`filter_rms`)."""
    convs = conv_layers(model)
    acts = layer_activations(model, images, list(convs))  # [N, C, H, W] after each conv's ReLU
    stats = {}
    for name, conv in convs.items():
        rms = filter_rms(conv.weight)
        stats.update({f"filters/dead_frac/{name}": (acts[name].amax(dim=(0, 2, 3)) <= 0).float().mean().item(),
                      f"filters/rms_mean/{name}": rms.mean().item(), f"filters/rms_max/{name}": rms.max().item()})
    return stats


@torch.no_grad()
def renormalize_filters_(model: nn.Module, radius: float = 0.1, layers: Iterable[str] | None = None) -> dict[str, int]:
    """Scale every conv filter whose RMS exceeds ``radius`` back onto it, in place.

    Filters at or below the radius are not touched (bit-identical). ``layers`` names the conv layers
    (``get_submodule`` names, e.g. ``["conv1"]``); ``None`` means every ``Conv2d``. Returns the number
    of filters rescaled per layer.
    """
    masks = renormalize_filter_masks_(model, radius, layers)
    counts = torch.stack([m.sum() for m in masks.values()]).tolist() if masks else []  # one device sync
    return dict(zip(masks, (int(c) for c in counts), strict=True))


@torch.no_grad()
def renormalize_filter_masks_(model: nn.Module, radius: float = 0.1, layers: Iterable[str] | None = None,
                              ) -> dict[str, torch.Tensor]:
    """As :func:`renormalize_filters_`, returning per layer a bool mask ``[out_channels]`` of the rescaled
    filters, on the weights' device (no synchronisation)."""
    renorm = FilterRenormalizer(conv_layers(model, layers), radius)
    return renorm.per_layer(renorm())


class FilterRenormalizer:
    """The renormalisation of a fixed set of conv layers, made once and applied after every optimizer step in
    fewer kernels than layer by layer: each layer's filter RMS (as :func:`filter_rms` computes it, so the numbers
    are bit for bit those of :func:`renormalize_filters_`), then the scales of every filter at once, then one
    multiplication per layer. Nothing is read back to the host. A filter at or under the radius is multiplied by
    exactly 1.0, which leaves its bits unchanged.

    Args:
        convs: the conv layers by name (their weights, ``[out, in, kh, kw]``, are updated in place).
        radius: the RMS radius (paper: 0.1).
    """

    def __init__(self, convs: dict[str, nn.Conv2d], radius: float = 0.1):
        if radius <= 0:
            raise InvalidValueError(f"radius={radius}: must be positive")
        self.names = list(convs)
        self.weights = [conv.weight for conv in convs.values()]
        self.sizes = [w.shape[0] for w in self.weights]
        self.radius = float(radius)

    @torch.no_grad()
    def __call__(self, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Renormalise; returns the bool mask ``[total filters]`` of those rescaled, layers in order. ``skip``: a
        ``[1]`` tensor on the device, non-zero when nothing is to change (a step whose update the optimizer
        skipped: the filters stay bit for bit as they were)."""
        if not self.weights:
            return torch.zeros(0, dtype=torch.bool)
        rms = torch.cat([filter_rms(w) for w in self.weights])
        over = rms > self.radius
        if skip is not None:
            over &= skip == 0
        scales = torch.where(over, self.radius / rms.clamp_min(torch.finfo(rms.dtype).tiny), 1.0)
        for w, scale in zip(self.weights, scales.split(self.sizes), strict=True):
            w.mul_(scale.view(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        return over

    def per_layer(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """A mask of :meth:`__call__` split by layer: ``{name: [out_channels]}``."""
        return dict(zip(self.names, mask.split(self.sizes), strict=True))
