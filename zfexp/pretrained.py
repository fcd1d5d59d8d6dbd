"""Transfer learning (Sec. 5.2): a network trained by ``train.py`` initialises a new one for another dataset;
its layers 1-7 stay fixed and a new softmax (fc8) is trained, or the same network is trained from scratch.

    python train.py experiment=transfer_caltech101 pretrained_ckpt=logs/train/runs/<time>/checkpoints/last.ckpt
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zfexp.checkpoints import read_checkpoint, with_lrn_convention
from zfexp.errors import CheckpointError, InvalidValueError
from zfexp.models.classifiers import build_classifier, classifier_name


@dataclass
class Pretrained:
    """What a ``train.py`` checkpoint gives a transfer run."""

    path: str
    net: dict[str, Any]  # the network's config (builder and options), as ImageClassifier saved it
    in_channels: int
    input_size: int
    num_classes: int
    state_dict: dict[str, torch.Tensor]  # the network's weights, keys relative to the network
    mean_image: torch.Tensor | None  # the mean image its inputs were normalised with, when the checkpoint has it


def load_pretrained(path: str | Path, key: str = "pretrained_ckpt", trusted: bool = False) -> Pretrained:
    """Read a checkpoint written by ``train.py`` (a Lightning checkpoint of :class:`ImageClassifier`), safely
    unless ``trusted`` (the user's ``trust_checkpoint=true``); errors name the config ``key`` that gave the path."""
    ckpt = read_checkpoint(path, key, trusted=trusted)
    hparams = ckpt.get("hyper_parameters") or {}
    if "net" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(f"{key}={path}: not a checkpoint of zfexp's ImageClassifier (it has no "
                              "hyper_parameters.net or state_dict); give a .ckpt written by train.py")
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    # Lightning keeps a datamodule's state under its class name; ours holds the mean image.
    mean = next((v["mean_image"] for v in ckpt.values() if isinstance(v, dict) and "mean_image" in v), None)
    net = with_lrn_convention(hparams["net"], "torch")  # a checkpoint naming no convention predates the key
    return Pretrained(str(path), net, int(hparams["in_channels"]), int(hparams["input_size"]),
                      int(hparams["num_classes"]), state, mean)


def pretrained_network(pretrained: Pretrained) -> nn.Module:
    """The checkpoint's network with its weights, in eval mode: what the analyses and Table 7 look at."""
    net = build_classifier(pretrained.net, pretrained.num_classes, pretrained.in_channels, pretrained.input_size,
                           from_checkpoint=True)
    try:
        net.load_state_dict(pretrained.state_dict)
    except RuntimeError as err:
        raise CheckpointError(f"{pretrained.path}: its weights do not fit the network built from its own config "
                              f"({str(err).splitlines()[0]}); the file was not written by train.py") from err
    return net.eval()


def check_compatible(pretrained: Pretrained, in_channels: int, input_size: int) -> None:
    """The new data must give the network images of the kind it was trained on."""
    if (pretrained.in_channels, pretrained.input_size) != (in_channels, input_size):
        raise InvalidValueError(
            f"pretrained_ckpt={pretrained.path}: the network takes {pretrained.in_channels}-channel "
            f"{pretrained.input_size} px images, the data gives {in_channels}-channel {input_size} px ones; set "
            f"data.preprocess.input_size={pretrained.input_size} and use data with {pretrained.in_channels} channel(s)")


def load_all_but_classifier_(net: nn.Module, pretrained: Pretrained) -> list[str]:
    """Copy every pretrained weight into ``net`` except the classifier's (its last ``nn.Linear``: ZFNet's
    ``fc8``, a ResNet's ``fc``), always new, its width the new number of classes; return the keys copied."""
    new = f"{classifier_name(net)}."
    kept = {k: v for k, v in pretrained.state_dict.items() if not k.startswith(new)}
    missing, unexpected = net.load_state_dict(kept, strict=False)
    wrong = [k for k in missing if not k.startswith(new)] + list(unexpected)
    if wrong:
        raise InvalidValueError(f"pretrained_ckpt={pretrained.path}: its weights do not fit the network built from its "
                                f"own config (mismatched keys {wrong[:6]})")
    return sorted(kept)
