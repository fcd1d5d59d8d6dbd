"""The network of ``zfexp.analyze network=...`` (any network not read from a ``train.py`` checkpoint, ZFNet's
builders included): a torchvision classification builder by name (``vgg16``, ``alexnet``, ``resnet18``), a timm
model (``timm/convnext_tiny``), any builder by dotted path, or a Hydra ``_target_`` mapping, with torchvision's
weights by name (``weights=DEFAULT``), timm's by tag, weights from a state_dict file, or the builder's own
(random) initialisation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zfexp.errors import CheckpointError, InvalidValueError
from zfexp.models.state_dicts import mismatch
from zfexp.models.timm_models import (
    PREFIX,
    build_timm,
    check_timm_name,
    names_timm,
    timm_class_names,
    timm_default_input,
    timm_input,
)
from zfexp.models.torchvision_weights import (
    build_pretrained,
    categories,
    names_weights,
    preprocessing,
    torchvision_weights,
)
from zfexp.safe_load import load_torch_file


@dataclass
class LoadedNetwork:
    """A network with what its weights say of their inputs: ``input`` (the ``input`` config's values, from
    ``weights.transforms()``; empty when the weights say nothing) and ``class_names`` (by output index)."""

    net: nn.Module
    input: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None


def named_weights_input(network: Any, weights: Any) -> dict[str, Any]:
    """The ``input`` config that named weights bring (``weights.transforms()``; no file is read), or a timm
    model's (its default config; nothing is loaded), ``{}`` for others: what ``input``'s null keys are checked
    against before anything is loaded."""
    if names_timm(network):
        check_timm_name("network", network[len(PREFIX):])
        return timm_default_input(network[len(PREFIX):])
    if not names_weights(weights) or not isinstance(network, str) or "." in network:
        return {}
    check_torchvision_builder("network", network)
    return preprocessing(torchvision_weights(network, str(weights), "weights"))


def load_network(spec: str | Mapping[str, Any], weights: str | None, trusted: bool = False) -> LoadedNetwork:
    """``network`` and ``weights`` of ``zfexp.analyze``: torchvision's named weights (``DEFAULT``,
    ``IMAGENET1K_V1``) with their preprocessing and class names, a state_dict file, or ``None`` / ``"none"``
    (the builder's initialisation). ``network=timm/<name>``: timm's model, ``weights`` a file, ``none``, or timm's
    pretrained weights by tag (``DEFAULT``, ``a1_in1k``), with timm's preprocessing."""
    if names_timm(spec):
        name = spec[len(PREFIX):]
        tagged = weights is not None and str(weights).lower() != "none" and not _is_file_path(weights)
        net = build_timm(name, weights if tagged else None, "weights").eval()
        if not tagged:
            load_weights(net, weights, trusted)
        return LoadedNetwork(net, timm_input(net), timm_class_names(net) if tagged else None)
    if names_weights(weights) and str(weights).lower() != "none":
        if not isinstance(spec, str) or "." in spec:
            raise InvalidValueError(f"weights={weights} names torchvision weights: give network=<a torchvision builder "
                                    "name> (resnet18, vgg16, ...) with it, or weights=<a state_dict file>")
        check_torchvision_builder("network", spec)
        chosen = torchvision_weights(spec, str(weights), "weights")
        net = build_pretrained(spec, chosen, "weights").eval()
        return LoadedNetwork(net, preprocessing(chosen), categories(chosen))
    return LoadedNetwork(load_weights(build_network(spec), weights, trusted))


def _is_file_path(weights: Any) -> bool:
    """A weights value that names a file (it exists, or it looks like a path) rather than a pretrained tag."""
    text = str(weights)
    return Path(text).expanduser().exists() or "/" in text or text.endswith((".pth", ".pt", ".bin", ".safetensors",
                                                                           ".ckpt"))


def build_network(spec: str | Mapping[str, Any]) -> nn.Module:
    """``"vgg16"`` (a builder of ``torchvision.models``, no pretrained weights), ``"pkg.module.builder"``
    (called without arguments), or ``{_target_: ..., **kwargs}`` -> the network, in eval mode."""
    if isinstance(spec, DictConfig):
        spec = cast("dict[str, Any]", OmegaConf.to_container(spec, resolve=True))  # a DictConfig's: a dict
    if isinstance(spec, Mapping):
        if "_target_" not in spec:
            raise InvalidValueError(f"network={dict(spec)}: a mapping needs _target_ (the builder's dotted path)")
        net = instantiate(dict(spec), _convert_="all")
    elif names_timm(spec):
        net = build_timm(spec[len(PREFIX):], None, "weights")
    elif isinstance(spec, str) and "." not in spec:
        import torchvision

        check_torchvision_builder("network", spec)
        net = torchvision.models.get_model(spec, weights=None)
    elif isinstance(spec, str):
        try:
            builder = get_method(spec)
        except Exception as err:  # Hydra wraps import errors in its own
            raise InvalidValueError(f"network={spec!r}: cannot import it ({err})") from err
        net = builder()
    else:
        raise InvalidValueError(f"network={spec!r}: give a torchvision builder name, a dotted path or a mapping "
                                "with _target_")
    if not isinstance(net, nn.Module):
        raise InvalidValueError(f"network={spec!r} built a {type(net).__name__}, not a torch.nn.Module")
    return net.eval()


def check_torchvision_builder(key: str, name: str) -> None:
    """``name`` is one of torchvision's classification builders (``resnet18``), or an error listing them."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)  # the classification networks
    if name not in names:
        raise InvalidValueError(f"{key}={name!r} is not a torchvision classification builder; valid: "
                                f"{', '.join(names)}; or a dotted path (mypkg.nets.build), or {{_target_: ..., ...}}")


def load_weights(net: nn.Module, weights: str | None, trusted: bool = False) -> nn.Module:
    """Load a state_dict file (or a checkpoint dict holding one under ``state_dict`` or ``model``) into ``net``,
    every key matching; ``None`` or ``"none"``: keep the builder's initialisation. Read safely
    (:func:`~zfexp.safe_load.load_torch_file`) unless ``trusted``."""
    if weights is None or str(weights).lower() == "none":
        return net
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights={path}: no such file; give a state_dict saved with "
                              "torch.save(net.state_dict(), path), or weights=none for random weights")
    state = load_torch_file(path, "weights", trusted=trusted, what="a state_dict saved with "
                            "torch.save(net.state_dict(), path)")
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"weights={path} holds a {type(state).__name__}, not a state_dict")
    differs = mismatch(net, state)
    if differs:
        raise CheckpointError(f"weights={path} holds weights of another network than {type(net).__name__}: "
                              f"{differs}; give the file of this network")
    net.load_state_dict(state)
    return net
