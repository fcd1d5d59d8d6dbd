"""Reading a network's activations: the output of named conv or linear layers, after their ReLU, from one
forward pass, for any network: hooks on the modules along a chain of them (ZFNet, torchvision's AlexNet and
VGG), the watched forward of :mod:`~zfexp.analysis.graph` elsewhere. The model runs its own ``forward``, in eval
mode, and is left in the mode it was in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from zfexp.analysis.graph import features_end, is_plain_chain, watch
from zfexp.analysis.network import StopForward, eval_mode, invalid_layer, leaf_modules

NAMED = (nn.Conv2d, nn.Linear)


def feature_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, in registration order (``conv1`` .. ``fc8`` for ZFNet)."""
    return [name for name, m in model.named_modules() if isinstance(m, NAMED)]


def _output_module(model: nn.Module, layer: str) -> nn.Module:
    """The module whose output is ``layer``'s features: its ReLU when one follows it, else the layer itself."""
    leaves = leaf_modules(model)
    names = [name for name, _ in leaves]
    if layer not in names or not isinstance(leaves[names.index(layer)][1], NAMED):
        raise invalid_layer(model, layer, NAMED)
    return leaves[features_end(leaves, names.index(layer))][1]


def check_feature_layers(model: nn.Module, layers: Sequence[str], key: str | None = None) -> None:
    """Raise :class:`InvalidValueError` (prefixed by the config ``key``) naming the valid layers if one of
    ``layers`` is not a conv or linear layer, or a block (a module with children, a ResNet's ``layer3.1``)."""
    modules = dict(model.named_modules())
    for layer in layers:
        module = modules.get(layer) if layer else None
        if module is None or not (isinstance(module, NAMED) or list(module.children())):
            raise invalid_layer(model, layer, NAMED, blocks=True, key=key)


def _in_chain(model: nn.Module, layer: str, images: torch.Tensor) -> bool:
    """Whether hooks on leaf modules read ``layer``'s features: a conv or linear layer of a chain of modules."""
    return is_plain_chain(model, layer, images, NAMED)


@torch.no_grad()
def layer_activations(model: nn.Module, images: torch.Tensor, layers: Sequence[str], logits: bool = False,
                      ) -> dict[str, torch.Tensor]:
    """Post-ReLU outputs of ``layers`` for ``images [N, C, H, W]``: ``{layer: [N, C_l, H_l, W_l]}`` for a conv,
    ``[N, D_l]`` for a linear layer; with ``logits=True`` also ``{"logits": [N, classes]}``. The forward pass
    stops at the deepest layer asked for unless the logits are wanted. A block's (``layer3.1``) is its output.

    Along a chain of modules (ZFNet, AlexNet, VGG) hooks on the modules read them; in any other network
    (residual additions, concatenations, functional ReLUs) the forward is watched
    (:class:`~zfexp.analysis.graph.FeatureSites`): the same numbers where both apply."""
    check_feature_layers(model, layers)
    if not all(_in_chain(model, layer, images) for layer in layers):
        with eval_mode(model):
            if not logits:
                return watch(model, images, layers)[0]
            features, out = watch(model, images, layers, logits=True)
        return {**features, "logits": out}
    modules = {layer: _output_module(model, layer) for layer in layers}
    caught: dict[str, torch.Tensor] = {}

    def keep(layer: str, out: torch.Tensor) -> None:
        caught[layer] = out.clone()  # a later in-place module (ReLU(inplace=True)) must not change it
        if not logits and len(caught) == len(modules):
            raise StopForward

    handles = [m.register_forward_hook(lambda mod, inp, out, layer=layer: keep(layer, out))
               for layer, m in modules.items()]
    try:
        with eval_mode(model):
            out = model(images)
        if logits:
            caught["logits"] = out
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return caught


@contextlib.contextmanager
def map_totals(model: nn.Module, layer: str, images: torch.Tensor,
               ) -> Iterator[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    """For many forwards of ``model`` (in eval mode) on batches like ``images``: ``forward(x [B, C, H, W], maps [B])
    -> (logits [B, classes], totals [B])``, ``totals[b]`` the sum of map ``maps[b]`` of ``layer``'s post-ReLU
    features for ``x[b]``. The layer is checked, and along a chain of modules its hook registered, once for all
    the forwards (what :func:`layer_activations` does per call); the total is taken in the hook, so no map is
    kept."""
    check_feature_layers(model, [layer])
    if not _in_chain(model, layer, images):
        def watched(x: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features, out = watch(model, x, [layer], logits=True)
            return out, features[layer][torch.arange(len(x), device=x.device), maps].sum((-2, -1))

        yield watched
        return
    asked: list[torch.Tensor] = []
    totals: list[torch.Tensor] = []

    def total(module: nn.Module, args, out: torch.Tensor) -> None:
        totals.append(out[torch.arange(len(out), device=out.device), asked[-1]].sum((-2, -1)))

    handle = _output_module(model, layer).register_forward_hook(total)

    def forward(x: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        asked[:], totals[:] = [maps], []
        out = model(x)
        return out, totals[-1]

    try:
        yield forward
    finally:
        handle.remove()


def layer_outputs(model: nn.Module, images: torch.Tensor, layers: Sequence[str],
                  max_side: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits ``[N, classes]`` of ``images [N, C, H, W]`` and each layer's feature vector ``[N, D_l]`` (its
    post-ReLU output flattened). ``max_side`` max-pools conv maps larger than that to ``max_side x max_side``
    first (conv1 of ZFNet at 224 px would be 96 x 110 x 110 numbers per image)."""
    acts = layer_activations(model, images, layers, logits=True)
    feats = {}
    for layer in layers:
        out = acts[layer]
        if max_side is not None and out.dim() == 4 and max(out.shape[-2:]) > max_side:
            out = nn.functional.adaptive_max_pool2d(out, max_side)
        feats[layer] = out.flatten(1)
    return acts["logits"], feats
