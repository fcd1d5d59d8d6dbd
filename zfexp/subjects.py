"""What an analysis entry point looks at (``zfexp.analyze``, ``zfexp.atlas``): a ``train.py`` checkpoint's network
with a split of its data or a folder of photographs, or any network (``network=...``, with its weights) on a
folder of photographs. The config keys (``ckpt_path``, ``network``, ``weights``, ``images``, ``input``, ``data``,
``trust_checkpoint``) are checked before anything is loaded."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from zfexp.data.normalization import InputNormalization
from zfexp.data.photos import ImageFiles, photo_transform
from zfexp.errors import InvalidValueError
from zfexp.models.external import load_network, named_weights_input
from zfexp.pretrained import Pretrained, load_pretrained, normalise_as_pretrained, pretrained_network
from zfexp.recipes import Inputs
from zfexp.safe_load import trust_option

log = logging.getLogger(__name__)

SPLITS = ("val", "test")  # images=<split>: a checkpoint's data split


@dataclass
class Subject:
    """A network in eval mode on the device, its images (``dataset[i] = (image [C, H, W], label)``), whether the
    labels are true ones (a split) or none (a folder: the network's prediction stands in), and how the recipes
    see the inputs (shown, grey, class names)."""

    net: torch.nn.Module
    dataset: Dataset
    labelled: bool
    inputs: Inputs
    record: dict[str, Any]  # what loading found (a network's input settings, a checkpoint's data settings)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images."""
        return cast("tuple[int, int, int]", tuple(self.dataset[0][0].shape))


def check_subject_config(cfg: DictConfig) -> None:
    """Stop on a bad ``ckpt_path`` / ``network`` / ``weights`` / ``images`` / ``input`` before anything is loaded."""
    if (cfg.get("ckpt_path") is None) == (cfg.get("network") is None):
        raise InvalidValueError(f"ckpt_path={cfg.get('ckpt_path')}, network={cfg.get('network')}: give one of them: "
                                "ckpt_path=<a checkpoint of train.py>, or network=<vgg16, alexnet, a dotted path to a "
                                "builder, or {_target_: ...}> (with weights=<DEFAULT, a name of torchvision's "
                                "weights, a state_dict file, or none>)")
    if cfg.get("network") is not None:
        if str(cfg.images) in SPLITS:
            raise InvalidValueError(f"images={cfg.images}: with network=..., there is no training run to take a "
                                    "split from; give images=<a folder of photographs>")
        InputNormalization.from_config(container(cfg.input),
                                       named_weights_input(network=cfg.network, weights=cfg.get("weights")))
    elif cfg.get("weights") is not None:
        raise InvalidValueError(f"weights={cfg.weights}: only with network=...; a checkpoint holds its weights")
    trust_option(cfg)


def container(group: DictConfig) -> dict[str, Any]:
    """A config group (``input``) as a plain dict, interpolations resolved."""
    return cast("dict[str, Any]", OmegaConf.to_container(group, resolve=True))  # a DictConfig's: a dict


def describe_subject(cfg: DictConfig) -> dict[str, Any]:
    """What ``cfg`` asks to look at, for the run's record (written whether loading succeeds or not)."""
    network = cfg.get("network")
    return {"ckpt_path": cfg.get("ckpt_path"), "weights": cfg.get("weights"), "images": str(cfg.images),
            "network": OmegaConf.to_container(network) if isinstance(network, DictConfig) else network}


def load_subject(cfg: DictConfig, device: torch.device) -> Subject:
    """The network and images ``cfg`` names (checked by :func:`check_subject_config`)."""
    network = cfg.get("network")
    record: dict[str, Any] = {}
    if network is not None:
        loaded = load_network(network, cfg.get("weights"), trust_option(cfg))
        # The input config's null values: the named weights' own preprocessing, else ImageNet's.
        normalization = InputNormalization.from_config(container(cfg.input), loaded.input)
        record["input"] = asdict(normalization)
        dataset = ImageFiles(os.path.expanduser(str(cfg.images)), normalization.transform())
        return Subject(loaded.net.to(device).eval(), dataset, False,
                       Inputs.of_normalization(normalization, loaded.class_names), record)
    pretrained = load_pretrained(cfg.ckpt_path, key="ckpt_path", trusted=trust_option(cfg))
    net = pretrained_network(pretrained).to(device)
    data = data_config(cfg, pretrained)
    record["data"] = OmegaConf.to_container(data, resolve=True)  # the data settings used, wherever they came from
    datamodule = instantiate(data, _convert_="all")
    normalise_as_pretrained(datamodule, pretrained)
    datamodule.prepare_data()
    datamodule.setup("test")
    if str(cfg.images) in SPLITS:
        dataset, labelled = datamodule.analysis_dataset(str(cfg.images)), True
    else:
        dataset = ImageFiles(os.path.expanduser(str(cfg.images)),
                             photo_transform(datamodule.preprocess, datamodule.mean, datamodule.num_channels))
        labelled = False
    return Subject(net, dataset, labelled, Inputs.of_datamodule(datamodule), record)


def data_config(cfg: DictConfig, pretrained: Pretrained) -> DictConfig:
    """``data`` from the command line, else the one the checkpoint's run was trained with: its run's
    ``config.yaml`` beside it, or the datamodule settings the checkpoint carries (a checkpoint moved out of its
    run dir), with this machine's ``paths.data_dir`` where the saved root does not exist here."""
    if cfg.get("data") is not None:
        return cfg.data
    run_config = Path(cfg.ckpt_path).resolve().parent.parent / "config.yaml"
    if run_config.is_file():
        return OmegaConf.load(run_config).data
    if pretrained.data is None:
        raise InvalidValueError(f"data: not given, {run_config} (the checkpoint run's config) does not exist and the "
                                "checkpoint carries no datamodule settings; pass data=<fashion_mnist|cifar10|imagenet> "
                                "to say which data the model was trained on")
    data = dict(pretrained.data)
    if not Path(str(data.get("root", ""))).expanduser().exists():
        log.info("data.root=%s (the checkpoint's) is not on this machine: %s instead", data.get("root"),
                 cfg.paths.data_dir)
        data["root"] = cfg.paths.data_dir
    return OmegaConf.create(data)
