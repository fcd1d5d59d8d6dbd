"""The ZFNet family (Zeiler & Fergus 2014, Fig. 3) as one builder, with the paper's ablation knobs.

Every network here is a flat ``nn.Sequential`` whose children carry the paper's names, so a layer is
addressed as ``model.get_submodule("conv3")`` or ``"fc7"``; each conv layer's companions are named by
its index (``relu3``; ``pool1``, ``norm1`` where the paper has them). A flat sequence of
conv / ReLU / max-pool / norm / linear modules is also what the deconvnet engine walks.

Layout of a full network (224 input, ``zfnet``)::

    conv1 relu1 pool1 norm1   96 x 110x110 -> 55x55
    conv2 relu2 pool2 norm2  256 x  26x26  -> 13x13
    conv3 relu3              384 x  13x13
    conv4 relu4              384 x  13x13
    conv5 relu5 pool5        256 x  13x13  ->  6x6   (flatten: 9216)
    fc6 relu6 drop6          4096
    fc7 relu7 drop7          4096
    fc8                      num_classes (logits; softmax lives in the loss)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypedDict

import torch
from torch import nn

from zfexp.checks import number_in, one_of, positive_int, positive_number
from zfexp.errors import InvalidValueError
from zfexp.models.contrast_norm import LocalContrastNorm

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_NAMES = ("fc6", "fc7", "fc8")
LAYER_NAMES = CONV_NAMES + FC_NAMES
NORMS = ("lrn", "batchnorm", "none")
INITS = ("paper", "kaiming")


class LRNOptions(TypedDict, total=False):
    """``lrn``: the arguments of :class:`LocalContrastNorm`; those not given are :data:`DEFAULT_LRN`'s."""

    size: int
    alpha: float
    beta: float
    k: float
    convention: str


# Krizhevsky et al.'s contrast normalisation constants, in their formula (alpha times the window's sum of
# squares); the paper does not give its own.
DEFAULT_LRN: LRNOptions = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "convention": "paper"}


@dataclass(frozen=True)
class ConvSpec:
    """One paper conv layer: conv -> ReLU [-> 3x3/2 max-pool] [-> contrast norm]."""

    out_channels: int
    kernel: int
    stride: int
    padding: int
    pool: bool = False
    norm: bool = False


# Fig. 3. Padding is not in the paper: 1/0/1/1/1 with ceil-mode pools gives its 110/55/26/13/6.
ZFNET = {
    "conv1": ConvSpec(96, 7, 2, 1, pool=True, norm=True),
    "conv2": ConvSpec(256, 5, 2, 0, pool=True, norm=True),
    "conv3": ConvSpec(384, 3, 1, 1),
    "conv4": ConvSpec(384, 3, 1, 1),
    "conv5": ConvSpec(256, 3, 1, 1, pool=True),
}
ZFNET_FC = {"fc6": 4096, "fc7": 4096}

# Table 2 (b) / Table 3: conv3-5 widened to 512/1024/512 maps.
ZFNET_V2 = {**ZFNET, "conv3": replace(ZFNET["conv3"], out_channels=512),
            "conv4": replace(ZFNET["conv4"], out_channels=1024),
            "conv5": replace(ZFNET["conv5"], out_channels=512)}

# The paper's AlexNet replication: dense (not split over two GPUs), conv1 11x11 stride 4.
ALEXNET = {**ZFNET, "conv1": ConvSpec(96, 11, 4, 2, pool=True, norm=True),
           "conv2": ConvSpec(256, 5, 1, 2, pool=True, norm=True)}

# Same 5 conv + 3 fc structure and names for 28-64 px inputs (Fashion-MNIST, CIFAR-10), widths about a
# quarter of ZFNet's (96:256:384:384:256 -> 32:64:96:96:64). conv1 keeps full resolution (a stride-2 7x7 on
# 28 px would discard most of the image); three pools remain.
# 28 px: 28 -> pool 14 -> 14 -> pool 7 -> 7 -> 7 -> 7 -> pool 3 (576 features).
ZFNET_SMALL = {
    "conv1": ConvSpec(32, 5, 1, 2, pool=True, norm=True),
    "conv2": ConvSpec(64, 3, 1, 1, pool=True, norm=True),
    "conv3": ConvSpec(96, 3, 1, 1),
    "conv4": ConvSpec(96, 3, 1, 1),
    "conv5": ConvSpec(64, 3, 1, 1, pool=True),
}
ZFNET_SMALL_FC = {"fc6": 256, "fc7": 256}

# The small preset's AlexNet: what ZFNet changed in conv1 (Fig. 6: AlexNet's 11x11 stride 4 -> 7x7 stride 2),
# undone at 28 px: conv1 9x9 stride 2 where zfnet_small has 5x5 stride 1 (28 -> 14 -> pool 7 -> ... -> pool 1).
ALEXNET_SMALL = {**ZFNET_SMALL, "conv1": ConvSpec(32, 9, 2, 4, pool=True, norm=True)}


class ZFNet(nn.Sequential):
    """A flat conv/ReLU/pool/norm/linear network whose layers carry the paper's names.

    Input ``[N, in_channels, input_size, input_size]``, output logits ``[N, num_classes]``.
    ``layer_names`` lists the paper layers present (after ``remove``), in order.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], *, input_size: int, layer_names: Sequence[str]):
        super().__init__(layers)
        self.input_size = input_size
        self.layer_names = tuple(layer_names)


def _apply_width_factors(arch: str, conv: Mapping[str, ConvSpec], fc: Mapping[str, int],
                         widths: dict[str, int], factors: Mapping[str, float]) -> dict[str, int]:
    """``{layer: factor}`` -> absolute widths of the preset scaled (at least 1), so that one ablation (e.g.
    "fc6, fc7 at half width") means the same on every preset."""
    base = {**{n: s.out_channels for n, s in conv.items()}, **fc}
    for name, factor in factors.items():
        if name not in base:
            raise InvalidValueError(f"width_factors: {name!r} is not a layer of {arch} whose width can be set; valid: "
                                    f"{', '.join(base)}")
        positive_number(f"width_factors.{name}", factor)
        if name in widths:
            raise InvalidValueError(f"{name} is set in both widths ({widths[name]}) and width_factors ({factor}); give "
                                    "one")
        widths[name] = max(1, round(base[name] * factor))
    return widths


def _check_options(arch: str, present: Sequence[str], remove: Sequence[str], widths: Mapping[str, int],
                   norm: str, init: str, dropout: float) -> None:
    """Reject bad ablation options with a message naming the value and what is valid."""
    removable = [n for n in present if n != "fc8"]
    for name in remove:
        if name not in removable:
            raise InvalidValueError(f"remove: {name!r} is not a removable layer of {arch}; valid: "
                                    f"{', '.join(removable)} (fc8, the classifier, always stays)")
    if all(c in remove for c in CONV_NAMES):
        raise InvalidValueError(f"remove={list(remove)} removes every conv layer of {arch}; keep at least one of "
                                f"{', '.join(CONV_NAMES)}")
    for name, width in widths.items():
        if name not in removable:
            raise InvalidValueError(f"widths: {name!r} is not a layer of {arch} whose width can be set; valid: "
                                    f"{', '.join(removable)} (fc8's width is num_classes)")
        positive_int(f"widths.{name}", width)
    one_of("norm", norm, NORMS)
    one_of("init", init, INITS)
    number_in("dropout", dropout, 0.0, 1.0)


def build_zfnet_family(
    conv: Mapping[str, ConvSpec],
    fc: Mapping[str, int],
    *,
    arch: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    remove: Sequence[str] = (),
    widths: Mapping[str, int] | None = None,
    width_factors: Mapping[str, float] | None = None,
    norm: str = "lrn",
    dropout: float = 0.5,
    init: str = "paper",
    lrn: LRNOptions | None = None,
) -> ZFNet:
    """Build a network of the family from per-layer specs, applying the ablation options.

    ``remove`` drops whole paper layers (a conv layer with its ReLU, pool and norm; an fc layer with its
    ReLU and dropout) and re-wires the rest: each remaining layer takes the channels of the previous one,
    and fc6's input size is inferred from the remaining conv stack. ``widths`` overrides the number of
    maps (conv) or units (fc) of a layer; ``width_factors`` scales the preset's width of a layer instead.
    """
    remove = list(remove or ())
    widths = _apply_width_factors(arch, conv, fc, dict(widths or {}), dict(width_factors or {}))
    _check_options(arch, LAYER_NAMES, remove, widths, norm, init, dropout)
    if num_classes < 1:
        raise InvalidValueError(f"num_classes={num_classes}: must be at least 1")
    lrn_params: LRNOptions = {**DEFAULT_LRN, **(lrn or {})}

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for name, spec in conv.items():
        if name in remove:
            continue
        i = name[-1]
        out = widths.get(name, spec.out_channels)
        layers[name] = nn.Conv2d(channels, out, spec.kernel, spec.stride, spec.padding)
        layers[f"relu{i}"] = nn.ReLU(inplace=False)  # not in-place: hooks must see post-ReLU maps intact
        if spec.pool:
            # ceil_mode reproduces the paper's 55 / 13 / 6 feature sizes.
            layers[f"pool{i}"] = nn.MaxPool2d(3, 2, ceil_mode=True)
        if spec.norm and norm != "none":
            layers[f"norm{i}"] = LocalContrastNorm(**lrn_params) if norm == "lrn" else nn.BatchNorm2d(out)
        channels = out
    layers["flatten"] = nn.Flatten(1)

    features = nn.Sequential(*layers.values())
    try:
        with torch.no_grad():
            # In eval mode so BatchNorm's running statistics are not touched; the modules are new, so
            # switching back to training mode afterwards restores them exactly.
            flat = features.eval()(torch.zeros(1, in_channels, input_size, input_size)).shape[1]
        features.train()
    except RuntimeError as err:
        raise InvalidValueError(f"input_size={input_size} is too small for {arch} with remove={remove}: the feature "
                                f"map vanishes ({err})") from err

    units = flat
    for name, width in fc.items():
        if name in remove:
            continue
        i = name[-1]
        out = widths.get(name, width)
        layers[name] = nn.Linear(units, out)
        layers[f"relu{i}"] = nn.ReLU(inplace=False)
        if dropout > 0:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        units = out
    layers["fc8"] = nn.Linear(units, num_classes)

    present = [n for n in LAYER_NAMES if n in layers]
    model = ZFNet(layers, input_size=input_size, layer_names=present)
    _initialise_(model, init)
    return model


def _initialise_(model: nn.Module, init: str) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "paper":
                # Sec. 3: "all weights initialized to 1e-2 and biases set to 0", read as N(0, 0.01).
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:  # every conv and linear layer of the family has one
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def zfnet(**options) -> ZFNet:
    """ZFNet exactly as Fig. 3: 224 input, 62,357,608 parameters with 1000 classes."""
    return build_zfnet_family(ZFNET, ZFNET_FC, arch="zfnet", **options)


def zfnet_v2(**options) -> ZFNet:
    """ZFNet with conv3-5 at 512/1024/512 maps (Table 2 (b), about 107.6M parameters)."""
    return build_zfnet_family(ZFNET_V2, ZFNET_FC, arch="zfnet_v2", **options)


def alexnet(**options) -> ZFNet:
    """The paper's dense AlexNet replication: conv1 11x11 stride 4, conv2 5x5 stride 1."""
    return build_zfnet_family(ALEXNET, ZFNET_FC, arch="alexnet", **options)


def zfnet_small(**options) -> ZFNet:
    """ZFNet's 5 conv + 3 fc structure, scaled for 28-64 px inputs (defaults to 28 px)."""
    options.setdefault("input_size", 28)
    return build_zfnet_family(ZFNET_SMALL, ZFNET_SMALL_FC, arch="zfnet_small", **options)


def alexnet_small(**options) -> ZFNet:
    """zfnet_small with AlexNet's kind of conv1 (9x9 stride 2 instead of 5x5 stride 1): Fig. 6 at 28 px."""
    options.setdefault("input_size", 28)
    return build_zfnet_family(ALEXNET_SMALL, ZFNET_SMALL_FC, arch="alexnet_small", **options)


def in_family(target: str) -> bool:
    """Whether the dotted path ``target`` (a ``model._target_``) names a builder of the ZFNet family."""
    return target.startswith("zfexp.models.") and target.rpartition(".")[2] in PRESETS


PRESETS = {"zfnet": zfnet, "zfnet_v2": zfnet_v2, "alexnet": alexnet, "zfnet_small": zfnet_small,
           "alexnet_small": alexnet_small}
