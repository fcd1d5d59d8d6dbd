"""Networks that are not ours, for ``zfexp.analyze network=...``: a torchvision classification builder by name
(``vgg16``, ``alexnet``, ``resnet18``), any builder by dotted path, or a Hydra ``_target_`` mapping, with
torchvision's weights by name (``weights=DEFAULT``), weights from a state_dict file, or the builder's own
(random) initialisation. And the layers the paper's analyses look at by default in such a network, by the
names it has (``features.10``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zfexp.errors import CheckpointError, InvalidValueError
from zfexp.models.torchvision_weights import (
    build_pretrained,
    categories,
    names_weights,
    preprocessing,
    torchvision_weights,
)
from zfexp.models.zfnet import CONV_NAMES
from zfexp.safe_load import load_torch_file


@dataclass
class LoadedNetwork:
    """A network with what its weights say of their inputs: ``input`` (the ``input`` config's values, from
    ``weights.transforms()``; empty when the weights say nothing) and ``class_names`` (by output index)."""

    net: nn.Module
    input: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None


def named_weights_input(network: Any, weights: Any) -> dict[str, Any]:
    """The ``input`` config that named weights bring (``weights.transforms()``; no file is read), ``{}`` for
    others: what ``input``'s null keys are checked against before anything is loaded."""
    if not names_weights(weights) or not isinstance(network, str) or "." in network:
        return {}
    check_torchvision_builder("network", network)
    return preprocessing(torchvision_weights(network, str(weights), "weights"))


def load_network(spec: str | Mapping[str, Any], weights: str | None, trusted: bool = False) -> LoadedNetwork:
    """``network`` and ``weights`` of ``zfexp.analyze``: torchvision's named weights (``DEFAULT``,
    ``IMAGENET1K_V1``) with their preprocessing and class names, a state_dict file, or ``None`` / ``"none"``
    (the builder's initialisation)."""
    if names_weights(weights) and str(weights).lower() != "none":
        if not isinstance(spec, str) or "." in spec:
            raise InvalidValueError(f"weights={weights} names torchvision weights: give network=<a torchvision builder "
                                    "name> (resnet18, vgg16, ...) with it, or weights=<a state_dict file>")
        check_torchvision_builder("network", spec)
        chosen = torchvision_weights(spec, str(weights), "weights")
        net = build_pretrained(spec, chosen, "weights").eval()
        return LoadedNetwork(net, preprocessing(chosen), categories(chosen))
    return LoadedNetwork(load_weights(build_network(spec), weights, trusted))


def build_network(spec: str | Mapping[str, Any]) -> nn.Module:
    """``"vgg16"`` (a builder of ``torchvision.models``, no pretrained weights), ``"pkg.module.builder"``
    (called without arguments), or ``{_target_: ..., **kwargs}`` -> the network, in eval mode."""
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, Mapping):
        if "_target_" not in spec:
            raise InvalidValueError(f"network={dict(spec)}: a mapping needs _target_ (the builder's dotted path)")
        net = instantiate(dict(spec), _convert_="all")
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
    missing, unexpected = _key_mismatch(net, state)
    if missing or unexpected:
        raise CheckpointError(f"weights={path} does not fit the network: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}; weights of another network?")
    net.load_state_dict(state)
    return net


def _key_mismatch(net: nn.Module, state: Mapping) -> tuple[list[str], list[str]]:
    own = set(net.state_dict())
    return sorted(own - set(state)), sorted(set(state) - own)


def conv_layer_names(net: nn.Module) -> list[str]:
    return [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]


def default_conv_layers(net: nn.Module, count: int = 5) -> list[str]:
    """The paper's ``conv1..conv5`` when the network has them; else ``count`` of its conv layers spread evenly
    from the first to the last (of VGG16's 13: ``features.0, features.7, features.14, features.21,
    features.28``)."""
    names = conv_layer_names(net)
    modules = dict(net.named_modules())
    if all(name in modules for name in CONV_NAMES):
        return list(CONV_NAMES)
    if not names:
        raise InvalidValueError(f"{type(net).__name__} has no Conv2d layer: the paper's analyses need a conv net")
    if len(names) <= count:
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]


def default_invariance_layers(net: nn.Module) -> list[str]:
    """Fig. 5 follows layer 1 and layer 7: the first conv, and the last hidden fully connected layer (the
    linear before the classifier), or the last conv where there is none."""
    modules = dict(net.named_modules())
    if "conv1" in modules and "fc7" in modules:
        return ["conv1", "fc7"]
    convs = conv_layer_names(net)
    linears = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    return [convs[0], linears[-2] if len(linears) >= 2 else convs[-1]]
