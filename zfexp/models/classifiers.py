"""The network train.py trains, from the ``model`` config: one of ours (the ZFNet family), a torchvision
classification network by name (``model=torchvision model.name=resnet18``, with ``model.weights=DEFAULT`` to
fine-tune torchvision's weights), or any ``_target_`` builder that takes ``num_classes``.

The data's images are given to it as they are: a builder that takes ``in_channels`` is told the data's channel
count; for one that does not, the first conv the forward runs is adapted (:func:`adapt_input_channels`)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any, cast

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from torch import nn

from zfexp.analysis.network import StopForward, eval_mode
from zfexp.errors import InvalidValueError, UserError
from zfexp.models.torchvision_weights import (
    build_pretrained,
    categories,
    names_weights,
    torchvision_weights,
    weights_only_loads,
)
from zfexp.models.zfnet import in_family

log = logging.getLogger(__name__)

# What conf/model/base.yaml gives every network of the ZFNet family.
ZFNET_OPTIONS = frozenset({"remove", "widths", "width_factors", "norm", "lrn", "dropout", "init"})


def build_classifier(spec: Mapping[str, Any], num_classes: int, in_channels: int, input_size: int,
                     from_checkpoint: bool = False) -> nn.Module:
    """The ``model`` config -> its network for ``num_classes`` classes of ``[in_channels, input_size,
    input_size]`` images. ``from_checkpoint``: the weights come from a checkpoint next, so none are loaded by
    the builder (``weights`` set to null): reading a checkpoint never needs torchvision's download."""
    spec = dict(spec)
    target = spec.get("_target_")
    if not isinstance(target, str):
        raise InvalidValueError(f"model._target_={target!r}: give the dotted path of a builder (zfexp.models.zfnet, "
                                "torchvision.models.resnet18), or model=torchvision model.name=<builder>")
    try:
        builder = get_method(target)
    except Exception as err:  # Hydra wraps import errors in its own
        raise InvalidValueError(f"model._target_={target!r}: cannot import it ({err})") from err
    if from_checkpoint and "weights" in spec:
        spec["weights"] = None
    takes = _parameters(builder) | ({"in_channels", "input_size"} if in_family(target) else set())
    # An experiment made for the ZFNet family sets its options (the quickstart: norm, dropout); another network
    # is built without those it does not take, as a warning says.
    unused = sorted(k for k in ZFNET_OPTIONS & set(spec) if k not in takes and not in_family(target))
    if unused:
        log.warning("model: %s: options of the ZFNet family, which %s does not take: not used",
                    ", ".join(f"{k}={spec[k]}" for k in unused), target)
        spec = {k: v for k, v in spec.items() if k not in unused}
    if "num_classes" not in takes and "**" not in takes:
        raise InvalidValueError(f"model._target_={target}: the builder takes no num_classes; train.py builds "
                                "classifiers for the data's classes")
    dims = {"num_classes": num_classes}
    dims.update({k: v for k, v in (("in_channels", in_channels), ("input_size", input_size)) if k in takes})
    try:
        with weights_only_loads():  # a builder that loads weights itself (torchvision's) reads them safely
            net = instantiate(spec, **dims, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError) and str(cause).startswith("model."):
            raise cause from err  # it names its full key already (model.weights=...)
        # The builders' messages start with the option's name; say which config node it belongs to.
        raise InvalidValueError(f"model.{cause if isinstance(cause, ValueError) else err}") from err
    if not isinstance(net, nn.Module):
        raise InvalidValueError(f"model._target_={target} built a {type(net).__name__}, not a torch.nn.Module")
    if not in_family(target):  # a network that is not ours: fitted to the data, then tried on it
        if "in_channels" not in takes:
            adapt_input_channels(net, in_channels, input_size)
        check_forward(net, in_channels, input_size, num_classes, target)
    return net


def check_forward(net: nn.Module, in_channels: int, input_size: int, num_classes: int, target: str) -> None:
    """Two blank images of the data's shape through ``net`` (eval mode, no grad): ``[2, num_classes]`` out, or
    an error saying what does not fit, before any training starts."""
    try:
        out = _forward(net, in_channels, input_size)
    except Exception as err:
        size = next((s for s in range(32, 1025, 32) if s > input_size and _takes(net, in_channels, s)), None)
        advice = (f"set data.preprocess.resize={size} data.preprocess.crop={size} data.preprocess.input_size={size} "
                  f"(the smallest multiple of 32 it takes)" if size else "its images must be larger than 1024 px")
        raise InvalidValueError(f"model._target_={target} does not take the data's {in_channels}-channel "
                                f"{input_size} px images ({type(err).__name__}: {str(err).splitlines()[0]}); "
                                f"{advice}, or use another network") from err
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidValueError(f"model._target_={target} gives {shape} for 2 images, not logits [2, {num_classes}]")


def _forward(net: nn.Module, in_channels: int, size: int):
    """Two blank images of ``size`` px through ``net``, in eval mode (each module left in its mode)."""
    with eval_mode(net), torch.no_grad():
        return net(torch.zeros(2, in_channels, size, size))


def _takes(net: nn.Module, in_channels: int, size: int) -> bool:
    try:
        _forward(net, in_channels, size)
    except Exception:
        return False
    return True


def torchvision_classifier(name: str, num_classes: int, in_channels: int = 3, input_size: int = 224,
                           weights: str | None = None) -> nn.Module:
    """torchvision's classification network ``name`` (``resnet18``) for ``num_classes`` classes; ``weights``:
    torchvision's by name (``DEFAULT``, ``IMAGENET1K_V1``: every layer but the classifier, which is new when the
    classes differ), or ``None`` for random initialisation. The first conv is adapted to ``in_channels``."""
    import torchvision

    from zfexp.models.external import check_torchvision_builder

    check_torchvision_builder("model.name", name)
    # Without their auxiliary classifiers, whose outputs a training forward would return beside the logits.
    options = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    if weights is None or str(weights).lower() == "none":
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    elif names_weights(weights):
        chosen = torchvision_weights(name, str(weights), "model.weights")
        net = build_pretrained(name, chosen, "model.weights")
        if len(categories(chosen) or ()) != num_classes:
            replace_classifier(net, num_classes, name)
    else:
        raise InvalidValueError(f"model.weights={weights!r}; valid: DEFAULT or a name of torchvision's weights for "
                                f"{name} (IMAGENET1K_V1, ...), or null (random initialisation); a train.py "
                                "checkpoint: pretrained_ckpt=<file>")
    adapt_input_channels(net, in_channels, input_size)
    return net


def classifier_name(net: nn.Module) -> str | None:
    """The classifier's name: the network's last ``nn.Linear`` (``fc8``, ``fc``, ``classifier.6``), if any."""
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def replace_classifier(net: nn.Module, num_classes: int, name: str) -> str:
    """A new last ``nn.Linear`` (the classifier) of ``num_classes`` outputs, randomly initialised; its name."""
    path = classifier_name(net)
    if path is None:
        raise InvalidValueError(f"model.name={name}: no nn.Linear classifier to give {num_classes} outputs; train it "
                                "with model.weights=null")
    old = cast(nn.Linear, net.get_submodule(path))  # classifier_name names an nn.Linear
    parent, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr,
            nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    log.info("model: a new %s for %d classes (the pretrained one had %d)", path, num_classes, old.out_features)
    return path


def adapt_input_channels(net: nn.Module, in_channels: int, input_size: int) -> str | None:
    """Make the first conv the forward runs take ``in_channels``; return its name when changed.

    From 3 channels to 1 (Fashion-MNIST into an RGB network): its filters summed over the colour channels,
    exactly what it computes on the grey image repeated as R, G and B (pretrained filters keep their meaning).
    Any other change: the conv rebuilt for ``in_channels``, randomly initialised, as a log line says."""
    path, conv = first_conv(net, input_size)
    if conv.in_channels == in_channels:
        return None
    if conv.groups != 1 or type(conv) is not nn.Conv2d:  # a subclass (a standardised conv) computes otherwise
        raise InvalidValueError(f"model: the network's first conv {path} ({type(conv).__name__}, "
                                f"groups={conv.groups}) takes {conv.in_channels} channels and cannot be rebuilt for "
                                f"the data's {in_channels}; use data with {conv.in_channels} channels")
    # torch types a conv's sizes as tuple[int, ...] (_ConvNd's); a Conv2d's are the pairs Conv2d takes.
    new = nn.Conv2d(in_channels, conv.out_channels,
                    conv.kernel_size, conv.stride, conv.padding, conv.dilation,  # type: ignore[arg-type]
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        if in_channels == 1:
            new.weight.copy_(conv.weight.sum(1, keepdim=True))
            how = "its filters summed over the colour channels"
        else:
            how = "randomly initialised"
        if conv.bias is not None and new.bias is not None:  # new has a bias where conv has one
            new.bias.copy_(conv.bias)
    parent, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, new)
    log.info("model: the first conv %s takes %d channels instead of %d, %s", path, in_channels, conv.in_channels, how)
    return path


def first_conv(net: nn.Module, input_size: int) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` a forward runs (a pre-hook stops the forward there, whatever the channels),
    else the first registered."""
    convs = {m: name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise InvalidValueError(f"{type(net).__name__} has no Conv2d layer: the paper's analyses need a conv net")
    found: list[nn.Conv2d] = []

    def stop(module, _inputs):
        found.append(module)
        raise StopForward

    handles = [m.register_forward_pre_hook(stop) for m in convs]
    first = next(iter(convs))
    try:
        with eval_mode(net), torch.no_grad():  # eval mode: a batch norm before the first conv keeps its statistics
            net(first.weight.new_zeros(1, first.in_channels, input_size, input_size))
    except Exception:  # StopForward; or a forward that needs more than a conv's input: the registration order decides
        pass
    finally:
        for h in handles:
            h.remove()
    conv = found[0] if found else first
    return convs[conv], conv


def _parameters(builder) -> set[str]:
    """The builder's keyword names, and ``"**"`` when it takes any."""
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return {"**"}
    return {("**" if p.kind is p.VAR_KEYWORD else p.name) for p in params}


def with_lrn_convention(net: Mapping[str, Any], convention: str) -> dict[str, Any]:
    """A ZFNet-family network config with ``lrn.convention`` set to ``convention`` where it names none.

    New modules save the convention they were built with (``"paper"`` when unnamed), so every checkpoint
    written since the key exists names it; a checkpoint that names none predates it and was trained with
    ``nn.LocalResponseNorm``'s convention (``"torch"``), which is how it is read back."""
    net = dict(net)
    ours = in_family(str(net.get("_target_", "")))
    if ours and net.get("norm", "lrn") == "lrn" and "convention" not in (net.get("lrn") or {}):
        net["lrn"] = {**(net.get("lrn") or {}), "convention": convention}
    return net
