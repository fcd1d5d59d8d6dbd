"""Transfer learning (Sec. 5.2): a network trained by ``train.py`` initialises a new one for another dataset;
its layers 1-7 stay fixed and a new softmax (fc8) is trained, or the same network is trained from scratch.
:func:`build_module` builds the module a training run fits, with or without a pretrained checkpoint.

    python train.py experiment=transfer_caltech101 pretrained_ckpt=logs/train/runs/<time>/checkpoints/last.ckpt
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zfexp.checkpoint_files import read_checkpoint
from zfexp.errors import CheckpointError, InvalidValueError
from zfexp.models.classifiers import build_classifier, classifier_name, with_lrn_convention
from zfexp.module import ImageClassifier

log = logging.getLogger(__name__)


@dataclass
class Pretrained:
    """What a ``train.py`` checkpoint gives a transfer run."""

    path: str
    net: dict[str, Any]  # the network's config (builder and options), to rebuild it (:func:`saved_network`)
    in_channels: int
    input_size: int
    num_classes: int
    state_dict: dict[str, torch.Tensor]  # the network's weights, keys relative to the network
    mean_image: torch.Tensor | None  # the mean image its inputs were normalised with, when the checkpoint has it
    data: dict[str, Any] | None = None  # its datamodule's config ({_target_, root, preprocess, ...}), when saved


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
    return Pretrained(str(path), saved_network(hparams["net"]), int(hparams["in_channels"]), int(hparams["input_size"]),
                      int(hparams["num_classes"]), state, mean, saved_data_config(ckpt))


def saved_network(net: dict[str, Any]) -> dict[str, Any]:
    """The network config a checkpoint saved, as the network its weights go into is rebuilt: a ZFNet-family
    config naming no LRN convention predates the key and was trained with ``nn.LocalResponseNorm``'s
    (:func:`~zfexp.models.classifiers.with_lrn_convention`); a builder's named weights (``model.weights=DEFAULT``)
    are neither read nor kept, as the checkpoint holds the weights."""
    net = with_lrn_convention(net, "torch")
    return {**net, "weights": None} if "weights" in net else net


def normalise_as_pretrained(datamodule, pretrained: Pretrained) -> None:
    """The datamodule's inputs normalised as the checkpoint's network was trained: where both subtract a mean
    image, the checkpoint's replaces the one the datamodule would compute from its own images."""
    if pretrained.mean_image is not None and datamodule.preprocess.mean_image:
        datamodule.mean = pretrained.mean_image


def saved_data_config(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The ``data`` config a checkpoint carries: Lightning saves the datamodule's hyperparameters
    (``datamodule_hyper_parameters``) and its state under its class name; ``None`` when it has neither or the
    class is not one of :mod:`zfexp.data`."""
    import zfexp.data

    hparams = ckpt.get("datamodule_hyper_parameters")
    names = [k for k, v in ckpt.items() if isinstance(v, dict) and k.endswith("DataModule")
             and isinstance(getattr(zfexp.data, k, None), type)]
    if not isinstance(hparams, dict) or len(names) != 1:
        return None
    return {"_target_": f"zfexp.data.{names[0]}", **hparams}


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


def check_compatible(pretrained: Pretrained, in_channels: int, input_size: int, key: str = "pretrained_ckpt",
                     ) -> None:
    """The new data must give the network images of the kind it was trained on; ``key`` names the checkpoint's
    config key in the error."""
    if (pretrained.in_channels, pretrained.input_size) != (in_channels, input_size):
        raise InvalidValueError(
            f"{key}={pretrained.path}: the network takes {pretrained.in_channels}-channel "
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


def build_module(cfg: DictConfig, datamodule, trusted: bool = False) -> ImageClassifier:
    """The network of the ``model`` group; or, with ``pretrained_ckpt``, the checkpoint's network with a new
    fc8 for this data's classes, its other weights loaded and layers up to ``freeze`` fixed (``from_scratch``:
    the same network randomly initialised, every layer trained). ``trusted``: the user's opt-in to unpickling
    the checkpoint in full."""
    options = cast("dict[str, Any]", OmegaConf.to_container(cfg.module, resolve=True))  # a DictConfig's: a dict
    dims = {"num_classes": datamodule.num_classes, "in_channels": datamodule.num_channels,
            "input_size": datamodule.input_size}
    if not cfg.get("pretrained_ckpt"):
        return ImageClassifier(net=cfg.model, **dims, **options)
    from_scratch = bool(cfg.get("from_scratch", False))
    pretrained = load_pretrained(cfg.pretrained_ckpt, trusted=trusted)
    check_compatible(pretrained, datamodule.num_channels, datamodule.input_size)
    module = ImageClassifier(net=pretrained.net, **dims, **options, freeze=None if from_scratch else cfg.get("freeze"))
    if from_scratch:
        log.info("from scratch: the network of %s, randomly initialised, all layers trained", pretrained.path)
        return module
    copied = load_all_but_classifier_(module.net, pretrained)
    normalise_as_pretrained(datamodule, pretrained)
    log.info("transfer: %d tensors from %s, new %s for %d classes, fixed: %s", len(copied), pretrained.path,
             classifier_name(module.net), datamodule.num_classes, ", ".join(module.frozen) or "nothing")
    return module
