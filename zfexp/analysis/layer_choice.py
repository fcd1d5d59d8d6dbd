"""Which layers of a network the paper's analyses draw, found from one forward pass on images of the size the
analysis uses: the convs the forward runs (an Inception's auxiliary heads are not run in eval mode), in the
order it runs them, whose maps are spatial and grow with the image. A conv on globally pooled features (a
squeeze-excite block's) gives a 1x1 map at every size: it has no receptive field and is not drawn."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zfexp.analysis.activations import check_feature_layers
from zfexp.analysis.deconv_record import check_projectable
from zfexp.analysis.network import eval_mode
from zfexp.analysis.receptive_field import field_geometry
from zfexp.errors import InvalidValueError
from zfexp.models.zfnet import CONV_NAMES

ImageShape = tuple[int, int, int]  # (channels, height, width) of the images the analysis uses


@dataclass(frozen=True)
class ConvMaps:
    """What one forward says of a network's convs: ``ran`` (their names, in the order the forward runs them),
    ``sizes`` (each one's output ``(H, W)``) and ``global_`` (those whose maps do not grow with the image); and
    ``linears``, the linear layers it ran, in order."""

    ran: tuple[str, ...]
    sizes: dict[str, tuple[int, int]]
    global_: frozenset[str]
    linears: tuple[str, ...]

    @property
    def drawable(self) -> list[str]:
        return [name for name in self.ran if name not in self.global_]


def conv_maps(net: nn.Module, image_shape: ImageShape) -> ConvMaps:
    """Run ``net`` (eval mode, no grad) on one blank image of ``image_shape`` and on one of twice its side: the
    convs that ran and their map sizes. A network that takes only one size (a ViT) is read from the first: its
    1x1 maps count as global. Cached per network and image shape."""
    channels, height, width = image_shape
    known, image_shape = _MAPS.setdefault(net, {}), (int(channels), int(height), int(width))  # a hashable key
    if image_shape not in known:
        known[image_shape] = _conv_maps(net, image_shape)
    return known[image_shape]


_MAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _conv_maps(net: nn.Module, image_shape: ImageShape) -> ConvMaps:
    first = _ran(net, image_shape)
    channels, height, width = image_shape
    try:
        second = _ran(net, (channels, 2 * height, 2 * width))
    except Exception:  # the network takes one size only
        second = {}
    sizes = {name: size for name, size in first.items() if size is not None}
    global_ = {name for name, size in sizes.items() if (second.get(name) == size if second else size == (1, 1))}
    linears = tuple(name for name, size in first.items() if size is None)
    return ConvMaps(tuple(sizes), sizes, frozenset(global_), linears)


def _ran(net: nn.Module, image_shape: ImageShape) -> dict[str, tuple[int, int] | None]:
    """The convs (their map's ``(H, W)``) and linear layers (``None``) a forward runs, in its order."""
    sizes: dict[str, tuple[int, int] | None] = {}
    names = {m: name for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    def record(module, _inputs, out):
        if isinstance(module, nn.Linear):
            sizes.setdefault(names[module], None)
        elif isinstance(out, torch.Tensor) and out.dim() == 4:
            sizes.setdefault(names[module], (out.shape[-2], out.shape[-1]))

    _blank_forward(net, image_shape, names, record)
    return sizes


def _blank_forward(net: nn.Module, image_shape: ImageShape, modules, hook) -> None:
    """One blank image of ``image_shape`` through ``net`` (eval mode, no grad), ``hook`` on each of ``modules``."""
    handles = [m.register_forward_hook(hook) for m in modules]
    weight = next(net.parameters())
    try:
        with eval_mode(net), torch.no_grad():
            net(weight.new_zeros((1, *image_shape)))
    finally:
        for handle in handles:
            handle.remove()


def default_conv_layers(net: nn.Module, image_shape: ImageShape, count: int = 5) -> list[str]:
    """The paper's ``conv1..conv5`` when the network has them; else ``count`` of its drawable convs
    (:class:`ConvMaps`), spread evenly from the first the forward runs to the last (of VGG16's 13:
    ``features.0, features.7, features.14, features.21, features.28``)."""
    modules = dict(net.named_modules())
    if all(isinstance(modules.get(name), nn.Conv2d) for name in CONV_NAMES):
        return list(CONV_NAMES)
    if not any(isinstance(m, nn.Conv2d) for m in modules.values()):
        raise InvalidValueError(f"{type(net).__name__} has no Conv2d layer: the paper's analyses need a conv net")
    names = conv_maps(net, image_shape).drawable
    if not names:
        raise InvalidValueError(f"{type(net).__name__}: none of its convs gives maps that grow with the image "
                                f"({image_shape[-1]} px): there is no conv map to draw")
    if len(names) <= count:
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]


def default_invariance_layers(net: nn.Module, image_shape: ImageShape) -> list[str]:
    """Fig. 5 follows layer 1 and layer 7: the first conv, and the last hidden fully connected layer (the
    linear the forward runs before the classifier), or the last drawable conv where there is none."""
    modules = dict(net.named_modules())
    if "conv1" in modules and "fc7" in modules:
        return ["conv1", "fc7"]
    convs = default_conv_layers(net, image_shape)
    linears = conv_maps(net, image_shape).linears
    return [convs[0], linears[-2] if len(linears) >= 2 else convs[-1]]


def check_drawn_layers(key: str, net: nn.Module, layers: Sequence[str], image_shape: ImageShape) -> None:
    """Each of ``layers`` (a conv or a block) runs in the forward and has a receptive field on images of
    ``image_shape`` (the crops and projections of Figs. 2 and 4 need one): else one error naming ``key``, the
    layer, why, and the layers that can be drawn."""
    for layer in layers:
        check_projectable(net, layer, key)  # its message lists the convs and blocks there are
        maps = conv_maps(net, image_shape)
        try:
            if isinstance(net.get_submodule(layer), nn.Conv2d) and layer not in maps.sizes:
                raise InvalidValueError(f"layer={layer!r} is not run by the network's forward in eval mode (an "
                                        "auxiliary head?)")
            field_geometry(net, layer, image_shape[0], image_shape[1:])
        except InvalidValueError as err:
            more = ", ..." if len(maps.drawable) > 16 else ""
            raise InvalidValueError(f"{key}: {err}; layers that can be drawn: {', '.join(maps.drawable[:16])}{more}") \
                from err


def check_read_layers(key: str, net: nn.Module, layers: Sequence[str], image_shape: ImageShape) -> None:
    """Each of ``layers`` is a conv, linear layer or block that the forward runs on images of ``image_shape``."""
    check_feature_layers(net, layers, key)
    names = {net.get_submodule(layer): layer for layer in layers}
    ran: set[str] = set()
    _blank_forward(net, image_shape, names, lambda module, *_: ran.add(names[module]))
    missing = [layer for layer in layers if layer not in ran]
    if missing:
        raise InvalidValueError(f"{key}: layer={missing[0]!r} is not run by the network's forward in eval mode (an "
                                "auxiliary head?); give a layer of its main path")
