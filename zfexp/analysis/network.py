"""Reading a network, the ground floor of :mod:`zfexp.analysis`: what every engine needs before it reads one,
and nothing of the engines themselves (no import of them). Its modes for a reading (:func:`eval_mode`), its
leaf modules, the one exception that ends a forward once a hook has what it needs (:class:`StopForward`), the
one message for a layer name that is not valid (:func:`invalid_layer`) and the deconvnet's rules at a ReLU
(:func:`relu_rule`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from zfexp.errors import InvalidValueError

RULES = ("deconvnet", "guided", "gradient")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block (dropout off, batch-norm statistics frozen), then every submodule
    back in the mode it was in: an analysis never leaves a training network in eval mode, nor puts a layer kept
    in eval mode (a transfer run's fixed layers) back into training."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


class StopForward(Exception):
    """Raised by a hook once the reading has what it needs: the rest of the forward pass is not computed. The
    code that registered the hook catches it around the forward."""


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module without children, in registration order (the forward order of a
    chain of modules: ZFNet, torchvision's AlexNet and VGG)."""
    return [(name, m) for name, m in model.named_modules() if name and not list(m.children())]


_KIND_NAMES = {nn.Conv2d: "conv", nn.Linear: "linear"}


def invalid_layer(model: nn.Module, layer: str, kinds: tuple[type[nn.Module], ...] = (nn.Conv2d,),
                  blocks: bool = False, key: str | None = None) -> InvalidValueError:
    """The error for ``layer``, which is not a module of ``kinds`` (nor a block, a module with children, where
    ``blocks``) of ``model``: it names the layers that are (the first 16), prefixed by the config ``key`` that
    gave it when there is one."""
    names = [name for name, m in model.named_modules() if isinstance(m, kinds)]
    what = " or ".join(_KIND_NAMES.get(kind, kind.__name__) for kind in kinds) + " layer"
    listed = ", ".join(names[:16]) or "none"
    more = ", ..." if len(names) > 16 else ""
    block = ", or a block (a module with children)" if blocks else ""
    prefix = f"{key}: " if key else ""
    return InvalidValueError(f"{prefix}layer={layer!r} is not a {what} of the model; valid: {listed}{more}{block}")


def relu_rule(signal: torch.Tensor, rule: str, positive: Callable[[], torch.Tensor],
              in_place: bool = False) -> torch.Tensor:
    """The way down through a ReLU: ``"deconvnet"`` rectifies the ``signal`` coming down (the paper),
    ``"guided"`` also masks it by where the forward's output was positive, ``"gradient"`` only masks it (the
    ReLU's gradient). ``positive()`` gives that mask (bool, broadcastable to ``signal``), asked for only by the
    rules that use it; ``in_place`` changes ``signal`` itself (a tensor the caller owns)."""
    if rule not in RULES:
        raise InvalidValueError(f"rule={rule!r}; valid: {', '.join(RULES)}")
    if rule != "gradient":
        signal = signal.relu_() if in_place else signal.clamp_min(0)
    if rule != "deconvnet":
        signal = signal.mul_(positive()) if in_place else signal * positive()
    return signal
