"""Reading any network's forward pass, not only a chain of modules: ResNets' additions, DenseNets'
concatenations, functional ReLUs (``F.relu``, ``torch.relu``, in place or not).

:class:`FeatureSites` watches one forward pass as a ``TorchFunctionMode``: it takes each chosen layer's
features as the paper reads them (a conv's: the output of the ReLU that follows it, through batch norm and a
residual addition; any other module's: its output), optionally runs every ReLU by a deconvnet rule, and stops
the forward once every layer is taken. :func:`is_plain_chain` says when the cheaper readings that run the leaf
modules one after the other apply (ZFNet, AlexNet, VGG): there both give the same numbers.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Literal, overload

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from zfexp.analysis.network import StopForward, eval_mode, invalid_layer, leaf_modules, relu_rule
from zfexp.models.contrast_norm import LocalContrastNorm

log = logging.getLogger(__name__)

RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
# Activations no rule of the deconvnet covers: their gradient is passed down, as captum does.
OTHER_ACTIVATIONS = {F.gelu, F.silu, F.elu, F.leaky_relu, F.hardswish, F.hardsigmoid, F.mish, F.softplus,
                     torch.sigmoid, torch.tanh, F.relu6, F.hardtanh, F.selu, F.celu}
_SAID_UNCOVERED: set[str] = set()  # the uncovered activations the log has named
CONTRAST_NORMS = (nn.LocalResponseNorm, LocalContrastNorm)  # passed through on the way down, as in the paper


class RuleReLU(torch.autograd.Function):
    """``relu(x)``, whose backward is the deconvnet ``rule``'s: ``"deconvnet"`` rectifies the signal coming down,
    ``"guided"`` also masks it by where the forward was positive, ``"gradient"`` only masks it."""

    generate_vmap_rule = True  # a batched backward (one seed per map) runs in one pass

    @staticmethod
    def forward(x: torch.Tensor, rule: str) -> torch.Tensor:
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.rule = inputs[1]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        return relu_rule(grad, ctx.rule, lambda: out > 0), None


class PassThrough(torch.autograd.Function):
    """``output`` going up, ``grad`` passed unchanged to ``x`` coming down: the paper's contrast normalisation."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return output.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def feature_module_types() -> tuple[type, ...]:
    """Layers whose features are read after the ReLU that follows them."""
    return nn.Conv2d, nn.Linear


class FeatureSites(TorchFunctionMode):
    """One forward pass of ``model``, watched: ``features[layer]`` for each of ``layers``.

    A ``Conv2d`` or ``Linear`` layer's features are the output of the first ReLU the forward runs on a tensor of
    the layer's output shape made from its output (through batch norm, dropout, a residual addition): the
    paper's post-ReLU maps. Where no ReLU follows (a DenseNet's convs feed a concatenation), its own output.
    Any other module's features are its output (a ResNet block's, already after its ReLU).

    ``rule``: run every ReLU as :class:`RuleReLU` with that rule, and contrast normalisation as
    :class:`PassThrough` (a deconvnet's recorded forward); ``None``: the network's own forward.
    ``stop``: end the forward once every layer is taken (use ``with sites.run(): model(x)``)."""

    def __init__(self, model: nn.Module, layers: Sequence[str], rule: str | None = None, stop: bool = True):
        super().__init__()
        modules = dict(model.named_modules())
        missing = [layer for layer in layers if layer not in modules or not layer]
        if missing:
            raise invalid_layer(model, missing[0], (nn.Conv2d, nn.Linear), blocks=True)
        self.layers, self.rule, self.stop = list(layers), rule, stop
        self.features: dict[str, torch.Tensor] = {}
        self._pending: dict[str, torch.Tensor] = {}  # conv / linear outputs waiting for their ReLU
        self._derived: dict[str, list[torch.Tensor]] = {}  # tensors made from each pending output, its shape
        self.uncovered: set[str] = set()  # activations the rule does not cover, met on the way
        self.total = 0  # the numbers of one image in all tensors of the forward: what a backward may hold at once
        self._handles = [modules[layer].register_forward_hook(self._hook(layer, modules[layer]))
                         for layer in self.layers]
        if rule is not None:
            self._handles += [m.register_forward_hook(lambda mod, inp, out: PassThrough.apply(inp[0], out))
                              for m in modules.values() if isinstance(m, CONTRAST_NORMS)]

    def _hook(self, layer: str, module: nn.Module):
        def hook(_module, _inputs, output):
            if isinstance(module, feature_module_types()):
                self._pending[layer], self._derived[layer] = output, [output]
            else:
                self._take(layer, output)
        return hook

    def _take(self, layer: str, features: torch.Tensor) -> None:
        # Kept apart from what the forward does next (an in-place ReLU or addition), except for a deconvnet's
        # recorded forward, which needs the tensor itself (and stops there).
        self.features[layer] = features if self.rule is not None else features.clone()
        self._pending.pop(layer, None)
        self._derived.pop(layer, None)
        if self.stop and len(self.features) == len(self.layers):
            raise StopForward

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELUS:
            x = args[0]
            out = RuleReLU.apply(x, self.rule) if self.rule is not None else func(*args, **kwargs)
            for layer in [lay for lay, made in self._derived.items() if any(x is t for t in made)]:
                self._take(layer, out)
            return out
        if self.rule is not None and func in OTHER_ACTIVATIONS:
            self.uncovered.add(getattr(func, "__name__", str(func)))
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dim() > 1:
            self.total += out[0].numel()
        if self._derived and isinstance(out, torch.Tensor):
            inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            for made in self._derived.values():
                if out.shape == made[0].shape and any(a is t for a in inputs for t in made):
                    made.append(out)
        return out

    def finish(self) -> dict[str, torch.Tensor]:
        """The features, once the forward has run: a conv that no ReLU followed gives its own output."""
        for layer, output in list(self._pending.items()):
            self.features[layer] = output if self.rule is not None else output.clone()
        for handle in self._handles:
            handle.remove()
        new = self.uncovered - _SAID_UNCOVERED
        if new:  # once per process for each activation, not per projection
            _SAID_UNCOVERED.update(new)
            log.info("the deconvnet's rule covers ReLUs; %s passed their gradient (as captum does)",
                     ", ".join(sorted(new)))
        return self.features


@overload
def watch(model: nn.Module, images: torch.Tensor, layers: Sequence[str], rule: str | None = None, *,
          logits: Literal[True]) -> tuple[dict[str, torch.Tensor], torch.Tensor]: ...


@overload
def watch(model: nn.Module, images: torch.Tensor, layers: Sequence[str], rule: str | None = None,
          logits: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]: ...


def watch(model: nn.Module, images: torch.Tensor, layers: Sequence[str], rule: str | None = None,
          logits: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Run ``model`` on ``images`` watched by :class:`FeatureSites`: ``(features, logits)``; the forward stops at
    the last layer needed unless ``logits`` (the logits are then ``None``; with ``logits=True`` the forward runs
    to its end and gives them)."""
    sites, out = watch_sites(model, images, layers, rule, logits)
    return sites.features, out


def watch_sites(model: nn.Module, images: torch.Tensor, layers: Sequence[str], rule: str | None = None,
                logits: bool = False) -> tuple[FeatureSites, torch.Tensor | None]:
    """:func:`watch`, returning the finished :class:`FeatureSites` (its ``features`` and ``total``)."""
    sites = FeatureSites(model, layers, rule=rule, stop=not logits)
    out = None
    try:
        with sites:
            out = model(images)
    except StopForward:
        pass
    finally:
        sites.finish()
    return sites, out


def features_end(leaves: list[tuple[str, nn.Module]], index: int) -> int:
    """Along a chain of leaf modules, the index of the leaf whose output is the features of the conv or linear
    layer at ``index``: the ReLU that follows it, after batch norm (VGG-BN); the layer itself when no ReLU
    follows."""
    end = index + 1
    while end < len(leaves) and isinstance(leaves[end][1], (nn.BatchNorm1d, nn.BatchNorm2d)):
        end += 1
    return end if end < len(leaves) and isinstance(leaves[end][1], nn.ReLU) else index


_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_plain_chain(model: nn.Module, layer: str, images: torch.Tensor,
                   kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)) -> bool:
    """Whether ``layer`` is one of ``kinds`` and ``model``'s forward on images like ``images [N, C, H, W]``, up to
    ``layer`` and the module after it, applies its leaf modules one after the other in registration order, each
    on the previous one's output (ZFNet, AlexNet, VGG): then the leaf modules alone compute the layer's features,
    as the windowed deconvnet, the leaf geometry and the hooks on leaf modules assume. The one place this is
    decided; checked once per model, layer and image size, on one forward of zeros."""
    if not isinstance(dict(model.named_modules()).get(layer), kinds):
        return False
    key = (layer, tuple(images.shape[1:]))
    known = _CHAINS.setdefault(model, {})
    if key not in known:
        known[key] = _check_chain(model, layer, images.new_zeros((1, *images.shape[1:])))
    return known[key]


def _check_chain(model: nn.Module, layer: str, probe: torch.Tensor) -> bool:
    leaves = leaf_modules(model)
    names = [name for name, _ in leaves]
    if layer not in names:
        return False
    end = min(features_end(leaves, names.index(layer)) + 1, len(leaves) - 1)
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def record(name):
        def hook(_module, inputs, output):
            calls.append((name, inputs[0], output))
            if name == names[end]:
                raise StopForward
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in leaves[: end + 1]]
    try:
        with eval_mode(model), torch.no_grad():
            model(probe)
    except StopForward:
        pass
    except RuntimeError:  # the network does not take an input of this size: read it the general way
        return False
    finally:
        for handle in handles:
            handle.remove()
    if [name for name, _, _ in calls] != names[: end + 1] or calls[0][1] is not probe:
        return False
    # Each leaf on the previous one's output: no operation between them (an addition, torch.flatten, F.relu).
    return all(inputs is previous for (_, inputs, _), (_, _, previous) in zip(calls[1:], calls[:-1], strict=True))
