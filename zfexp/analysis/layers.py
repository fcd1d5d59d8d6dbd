"""Activations of named layers (conv or fully connected) from one forward pass, after their ReLU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from zfexp.errors import InvalidValueError

NAMED = (nn.Conv2d, nn.Linear)


def feature_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, in registration order (``conv1`` .. ``fc8`` for ZFNet)."""
    return [name for name, m in model.named_modules() if isinstance(m, NAMED)]


def _output_module(model: nn.Module, layer: str) -> nn.Module:
    """The module whose output is ``layer``'s feature vector: its ReLU when one follows it, else itself."""
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    names = [n for n, _ in leaves]
    if layer not in names or not isinstance(leaves[names.index(layer)][1], NAMED):
        raise InvalidValueError(f"layer={layer!r} is not a conv or linear layer of the model; valid: "
                                f"{', '.join(feature_layers(model))}")
    i = names.index(layer)
    if i + 1 < len(leaves) and isinstance(leaves[i + 1][1], nn.ReLU):
        return leaves[i + 1][1]
    return leaves[i][1]


def check_feature_layers(model: nn.Module, layers: Sequence[str]) -> None:
    for layer in layers:
        _output_module(model, layer)


@torch.no_grad()
def layer_outputs(model: nn.Module, images: torch.Tensor, layers: Sequence[str],
                  max_side: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass of ``images [N, C, H, W]`` in eval mode: the logits ``[N, classes]`` and, per layer,
    its (post-ReLU) output flattened to ``[N, D_l]``. ``max_side`` max-pools conv maps larger than that to
    ``max_side x max_side`` first (conv1 of ZFNet at 224 px would be 96 x 110 x 110 numbers per image)."""
    modules = {layer: _output_module(model, layer) for layer in layers}
    caught: dict[str, torch.Tensor] = {}

    def keep(layer: str, out: torch.Tensor) -> None:
        if max_side is not None and out.dim() == 4 and max(out.shape[-2:]) > max_side:
            out = nn.functional.adaptive_max_pool2d(out, max_side)
        caught[layer] = out.flatten(1).clone()

    handles = [m.register_forward_hook(lambda mod, inp, out, layer=layer: keep(layer, out))
               for layer, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        logits = model(images)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return logits, {layer: caught[layer] for layer in layers}
