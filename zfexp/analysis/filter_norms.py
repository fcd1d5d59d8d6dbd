"""Filter renormalisation (Sec. 3): "we renormalize each filter in the convolutional layers whose RMS
value exceeds a fixed radius of 1e-1 to this fixed radius"."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from zfexp.errors import InvalidValueError


def conv_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Conv2d]:
    """The model's ``Conv2d`` modules by name; ``layers`` selects some by ``get_submodule`` name."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if layers is None:
        return convs
    chosen = {}
    for name in layers:
        if name not in convs:
            raise InvalidValueError(f"layers: {name!r} is not a conv layer of the model; valid: "
                                    f"{', '.join(convs) or 'none'}")
        chosen[name] = convs[name]
    return chosen


def filter_rms(weight: torch.Tensor) -> torch.Tensor:
    """RMS of each filter: ``[out, in, kh, kw]`` weights -> ``[out]``, ``sqrt(mean(w**2))`` over a filter."""
    return weight.detach().pow(2).flatten(1).mean(1).sqrt()


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
    filters. The masks stay on the weights' device, so calling this every step never synchronises a GPU."""
    if radius <= 0:
        raise InvalidValueError(f"radius={radius}: must be positive")
    renormed = {}
    for name, conv in conv_layers(model, layers).items():
        w = conv.weight
        rms = filter_rms(w)
        over = rms > radius
        # Filters under the radius are multiplied by exactly 1.0, which leaves their bits unchanged.
        scale = torch.where(over, radius / rms.clamp_min(torch.finfo(rms.dtype).tiny), torch.ones_like(rms))
        w.mul_(scale.view(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        renormed[name] = over
    return renormed
