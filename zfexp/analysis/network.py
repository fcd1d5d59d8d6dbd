"""Reading a network, the ground floor of :mod:`zfexp.analysis`: what every engine needs before it reads one,
and nothing of the engines themselves (no import of them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


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
