"""Analyse a saved checkpoint, or any conv net: the paper's pictures and measures on its test split or on a
folder of photographs, written to ``logs/analyze/runs/<time>/`` and to a W&B run.

    python -m zfexp.analyze ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt
    python -m zfexp.analyze ckpt_path=... images=~/photos analyses=[occlusion,invariance]
    python -m zfexp.analyze network=vgg16 weights=vgg16.pth images=~/photos        # ImageNet's mean/std
    python -m zfexp.analyze network=resnet18 weights=DEFAULT images=~/photos       # torchvision's weights

Outputs: ``images/<analysis>_<...>.png`` (the same as the training callbacks draw), ``tables/*.csv`` (the
numbers behind the occlusion, invariance and correspondence figures, also W&B tables) and ``analyze.json``
(what was written).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import Dataset, Subset

from zfexp import recipes
from zfexp.analysis import TRANSFORMS
from zfexp.analysis.layer_choice import (
    check_drawn_layers,
    check_read_layers,
    default_conv_layers,
    default_invariance_layers,
)
from zfexp.analysis.map_choice import chosen_maps
from zfexp.data.classes import dataset_size, dataset_targets
from zfexp.data.normalization import InputNormalization
from zfexp.data.photos import ImageFiles, photo_transform
from zfexp.data.sampling import probe_indices, stack_dataset
from zfexp.errors import InvalidValueError
from zfexp.models.external import load_network, named_weights_input
from zfexp.pretrained import Pretrained, load_pretrained, normalise_as_pretrained, pretrained_network
from zfexp.recipes import Inputs, Sink
from zfexp.runs.devices import check_device, device_of
from zfexp.runs.lifecycle import Run, hydra_entry_point, task_wrapper
from zfexp.runs.outputs import RunSink
from zfexp.safe_load import trust_option

log = logging.getLogger(__name__)

class Analysis:
    """What every analysis needs: its settings, the network, the images, and the sink its results go to."""

    def __init__(self, cfg: DictConfig, net: torch.nn.Module, dataset: Dataset, labelled: bool, sink: Sink,
                 device: torch.device, inputs: Inputs):
        self.cfg, self.net, self.dataset, self.labelled = cfg, net, dataset, labelled
        self.sink, self.device, self.inputs = sink, device, inputs

    @property
    def size(self) -> int:
        """How many images ``dataset`` has."""
        return dataset_size(self.dataset)

    def batch(self, n: int, seed_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images ``[n, C, H, W]`` (a folder: its first ``n``; a split: ``n`` at random, seeded) and their
        labels ``[n]``; a folder's images are labelled with the model's own prediction."""
        if self.labelled:
            indices = probe_indices(self.size, n, self.cfg.seed + seed_offset)
        else:
            indices = torch.arange(min(n, self.size))
        images, labels = stack_dataset(self.dataset, indices)
        images = images.to(self.device)
        if not self.labelled:
            labels = self.net(images).argmax(1)
        return images, labels.to(self.device)


# -- the analyses: the recipes of zfexp.recipes with this run's settings (``cfg.<name>``) -----------------------
def deconv(job: Analysis) -> None:
    c = job.cfg.deconv
    images, _ = job.batch(c.num_images)
    recipes.deconv_snapshot(job.net, images, chosen_maps(job.net, list(c.layers), c.maps_per_layer, job.cfg.seed),
                            job.sink)


def top9(job: Analysis) -> None:
    c = job.cfg.top9
    dataset = job.dataset if c.max_images is None else Subset(job.dataset, range(min(c.max_images, job.size)))
    maps = chosen_maps(job.net, list(c.layers), c.maps_per_layer, job.cfg.seed)
    recipes.top_k(job.net, dataset, maps, c.k, job.device, job.sink, job.inputs.class_names)


def occlusion(job: Analysis) -> None:
    c = job.cfg.occlusion
    images, labels = job.batch(c.num_images, seed_offset=1)
    recipes.occlusion(job.net, images, labels, job.inputs, job.sink, c.feature_layer, c.patch, c.stride,
                      c.batch_size, truth="true" if job.labelled else "predicted")


def invariance(job: Analysis) -> None:
    c = job.cfg.invariance
    images, labels = job.batch(c.num_images, seed_offset=2)
    recipes.invariance(job.net, images, labels, list(c.transforms), list(c.layers), job.inputs, job.sink)


def correspondence(job: Analysis) -> None:
    c = job.cfg.correspondence
    if job.labelled:
        chosen = images_of_class(job.dataset, c.class_index, c.num_images)
        if len(chosen) < 2:
            raise InvalidValueError(f"correspondence.class_index={c.class_index}: fewer than 2 images of that class")
        images, _ = stack_dataset(job.dataset, chosen)
    else:
        images, _ = stack_dataset(job.dataset, range(min(c.num_images, job.size)))
    images = images.to(job.device)
    height, width = images.shape[-2:]
    parts = {name: [_box(frac, height, width)] * len(images) for name, frac in c.parts.items()}
    recipes.correspondence_table(job.net, images, parts, list(c.layers), job.inputs, job.sink, c.n_random,
                                 job.cfg.seed)


# ``analyses=[...]`` names these, in the order they run; ``check_config`` validates against them.
ANALYSES: dict[str, Callable[[Analysis], None]] = {
    "deconv": deconv, "top9": top9, "occlusion": occlusion, "invariance": invariance,
    "correspondence": correspondence}


def images_of_class(dataset: Dataset, class_index: int, count: int) -> list[int]:
    """Indices of the first ``count`` images labelled ``class_index``, found from the labels alone: not one image
    is decoded (a split of ImageNet has 50,000)."""
    return [i for i, label in enumerate(dataset_targets(dataset)) if label == class_index][:count]


def _box(frac, height: int, width: int) -> tuple[int, int, int, int]:
    """Fractions ``(top, left, bottom, right)`` of the image side -> an inclusive pixel box."""
    if len(frac) != 4 or not all(0.0 <= float(f) <= 1.0 for f in frac) or frac[0] > frac[2] or frac[1] > frac[3]:
        raise InvalidValueError(f"correspondence.parts: box {list(frac)}; valid: [top, left, bottom, right] as "
                                "fractions of the side in [0, 1], top <= bottom, left <= right")
    top, left = int(float(frac[0]) * (height - 1)), int(float(frac[1]) * (width - 1))
    return top, left, int(float(frac[2]) * (height - 1)), int(float(frac[3]) * (width - 1))


def check_config(cfg: DictConfig) -> None:
    """Stop on a bad value before anything is loaded."""
    bad = [a for a in cfg.analyses if a not in ANALYSES]
    if bad or not cfg.analyses:
        raise InvalidValueError(f"analyses={list(cfg.analyses)} has {bad or 'nothing'}; valid: {', '.join(ANALYSES)}")
    bad = [t for t in cfg.invariance.transforms if t not in TRANSFORMS]
    if bad:
        raise InvalidValueError(f"invariance.transforms={list(cfg.invariance.transforms)} has {bad}; valid: "
                                f"{', '.join(TRANSFORMS)}")
    check_device(cfg.device)
    if (cfg.get("ckpt_path") is None) == (cfg.get("network") is None):
        raise InvalidValueError(f"ckpt_path={cfg.get('ckpt_path')}, network={cfg.get('network')}: give one of them: "
                                "ckpt_path=<a checkpoint of train.py>, or network=<vgg16, alexnet, a dotted path to a "
                                "builder, or {_target_: ...}> (with weights=<DEFAULT, a name of torchvision's "
                                "weights, a state_dict file, or none>)")
    if cfg.get("network") is not None:
        if str(cfg.images) == "test":
            raise InvalidValueError("images=test: with network=..., there is no training run to take a test split "
                                    "from; give images=<a folder of photographs>")
        InputNormalization.from_config(_container(cfg.input),
                                       named_weights_input(network=cfg.network, weights=cfg.get("weights")))
    elif cfg.get("weights") is not None:
        raise InvalidValueError(f"weights={cfg.weights}: only with network=...; a checkpoint holds its weights")
    trust_option(cfg)


def _container(group: DictConfig) -> dict[str, Any]:
    """A config group (``input``) as a plain dict, interpolations resolved."""
    return cast("dict[str, Any]", OmegaConf.to_container(group, resolve=True))  # a DictConfig's: a dict


def resolve_layers(cfg: DictConfig, net: torch.nn.Module, image_shape: tuple[int, int, int]) -> None:
    """Fill the layer lists left null with the network's defaults for images of ``image_shape`` (C, H, W), and
    check every layer named, so that a layer that cannot be drawn stops the run before any analysis, with the
    ones that can listed."""
    convs, invariance = default_conv_layers(net, image_shape), default_invariance_layers(net, image_shape)
    defaults = {("deconv", "layers"): convs, ("top9", "layers"): convs, ("occlusion", "feature_layer"): convs[-1],
                ("invariance", "layers"): invariance, ("correspondence", "layers"): [convs[-1], invariance[-1]]}
    with open_dict(cfg):
        for (group, key), value in defaults.items():
            if cfg[group].get(key) is None:
                cfg[group][key] = value
    for group in ("deconv", "top9"):
        if group in cfg.analyses:
            check_drawn_layers(f"{group}.layers", net, list(cfg[group].layers), image_shape)
    for key, layers in (("occlusion.feature_layer", [cfg.occlusion.feature_layer]),
                        ("invariance.layers", cfg.invariance.layers),
                        ("correspondence.layers", cfg.correspondence.layers)):
        if key.split(".")[0] in cfg.analyses:
            check_read_layers(key, net, list(layers), image_shape)


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


@task_wrapper("analyze.json")
def analyze(cfg: DictConfig, run: Run) -> None:
    """The analyses of ``cfg.analyses`` on a checkpoint; what was written goes to ``<run dir>/analyze.json``."""
    check_config(cfg)
    device = device_of(cfg.device)
    network = cfg.get("network")
    run.record.update(ckpt_path=cfg.get("ckpt_path"), weights=cfg.get("weights"), images=str(cfg.images),
                      network=OmegaConf.to_container(network) if isinstance(network, DictConfig) else network,
                      analyses=list(cfg.analyses))
    if network is not None:
        loaded = load_network(network, cfg.get("weights"), trust_option(cfg))
        net = loaded.net.to(device).eval()
        # The input config's null values: the named weights' own preprocessing, else ImageNet's.
        normalization = InputNormalization.from_config(_container(cfg.input), loaded.input)
        run.record["input"] = asdict(normalization)
        dataset = ImageFiles(os.path.expanduser(str(cfg.images)), normalization.transform())
        labelled, inputs = False, Inputs.of_normalization(normalization, loaded.class_names)
    else:
        pretrained = load_pretrained(cfg.ckpt_path, key="ckpt_path", trusted=trust_option(cfg))
        net = pretrained_network(pretrained).to(device)
        datamodule = instantiate(data_config(cfg, pretrained), _convert_="all")
        normalise_as_pretrained(datamodule, pretrained)
        datamodule.prepare_data()
        datamodule.setup("test")
        if str(cfg.images) == "test":
            dataset, labelled = datamodule.analysis_dataset("test"), True
        else:
            dataset = ImageFiles(os.path.expanduser(str(cfg.images)),
                                 photo_transform(datamodule.preprocess, datamodule.mean, datamodule.num_channels))
            labelled = False
        inputs = Inputs.of_datamodule(datamodule)
    resolve_layers(cfg, net, tuple(dataset[0][0].shape))
    sink = RunSink(run.dir, run.open_loggers(cfg))
    run.record["outputs"] = sink.written
    job = Analysis(cfg, net, dataset, labelled, sink, device, inputs)
    with torch.no_grad():
        for name in cfg.analyses:
            ANALYSES[name](job)
    log.info("analyses written to %s", run.dir)


main = hydra_entry_point(analyze, "analyze")

if __name__ == "__main__":
    main()
