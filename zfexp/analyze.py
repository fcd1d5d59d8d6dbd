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
from collections.abc import Callable

import torch
from omegaconf import DictConfig, open_dict
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
from zfexp.data.sampling import probe_indices, stack_dataset
from zfexp.errors import InvalidValueError
from zfexp.recipes import Inputs, Sink
from zfexp.runs.devices import check_device, device_of
from zfexp.runs.lifecycle import Run, hydra_entry_point, task_wrapper
from zfexp.runs.outputs import RunSink
from zfexp.subjects import check_subject_config, describe_subject, load_subject

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
    check_subject_config(cfg)


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


@task_wrapper("analyze.json")
def analyze(cfg: DictConfig, run: Run) -> None:
    """The analyses of ``cfg.analyses`` on a checkpoint; what was written goes to ``<run dir>/analyze.json``."""
    check_config(cfg)
    device = device_of(cfg.device)
    run.record.update(describe_subject(cfg), analyses=list(cfg.analyses))
    subject = load_subject(cfg, device)
    run.record.update(subject.record)
    resolve_layers(cfg, subject.net, subject.image_shape)
    sink = RunSink(run.dir, run.open_loggers(cfg))
    run.record["outputs"] = sink.written
    job = Analysis(cfg, subject.net, subject.dataset, subject.labelled, sink, device, subject.inputs)
    with torch.no_grad():
        for name in cfg.analyses:
            ANALYSES[name](job)
    log.info("analyses written to %s", run.dir)


main = hydra_entry_point(analyze, "analyze")

if __name__ == "__main__":
    main()
