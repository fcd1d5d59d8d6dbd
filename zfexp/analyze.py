"""Analyse a saved checkpoint, or any conv net: the paper's pictures and measures on its test split or on a
folder of photographs, written to ``logs/analyze/runs/<time>/`` and to a W&B run.

    python -m zfexp.analyze ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt
    python -m zfexp.analyze ckpt_path=... images=~/photos analyses=[occlusion,invariance]
    python -m zfexp.analyze network=vgg16 weights=vgg16.pth images=~/photos        # input=imagenet: its mean/std

Outputs: ``images/<analysis>_<...>.png`` (the same as the training callbacks draw), ``tables/*.csv`` (the
numbers behind the occlusion, invariance and correspondence figures, also W&B tables) and ``analyze.json``
(what was written).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Dataset, Subset

from zfexp.analysis import (
    TRANSFORMS,
    correspondence,
    invariance_curves,
    occlude_boxes,
    occlusion_maps,
    top_activations_by_layer,
)
from zfexp.analysis.activations import check_feature_layers
from zfexp.analysis.deconv_record import check_projectable
from zfexp.analysis.map_choice import chosen_maps
from zfexp.analysis.occlusion import drill_down
from zfexp.data.classes import dataset_targets
from zfexp.data.normalization import InputNormalization
from zfexp.data.photos import ImageFiles, photo_transform
from zfexp.data.sampling import probe_indices, stack_dataset
from zfexp.data.transforms import displayable
from zfexp.errors import InvalidValueError
from zfexp.figures.feature_tiles import strongest_unit_tiles, top_k_sheet, top_k_table, top_k_tiles
from zfexp.figures.grid import image_grid
from zfexp.figures.plots import invariance_figure, occlusion_figure
from zfexp.models.external import build_network, default_conv_layers, default_invariance_layers, load_weights
from zfexp.pretrained import load_pretrained, pretrained_network
from zfexp.runs.devices import check_device, device_of
from zfexp.runs.lifecycle import Run, hydra_entry_point, task_wrapper
from zfexp.runs.outputs import write_figure, write_image, write_table
from zfexp.safe_load import trust_option

log = logging.getLogger(__name__)

ANALYSES = ("deconv", "top9", "occlusion", "invariance", "correspondence")


class Analysis:
    """What every analysis needs: the network, the images, where results go."""

    def __init__(self, cfg: DictConfig, net: torch.nn.Module, dataset: Dataset, labelled: bool, run_dir: Path,
                 loggers: list, device: torch.device, inputs: DatamoduleInputs | InputNormalization,
                 class_names: list[str] | None = None):
        self.cfg, self.net, self.dataset, self.labelled = cfg, net, dataset, labelled
        self.run_dir, self.loggers, self.device = run_dir, loggers, device
        self.inputs, self.class_names = inputs, class_names
        self.written: list[str] = []

    def image(self, key: str, image: torch.Tensor, caption: str) -> None:
        self.written.append(str(write_image(self.run_dir, self.loggers, key, image, 0, caption)))

    def figure(self, key: str, fig, caption: str) -> None:
        self.written.append(str(write_figure(self.run_dir, self.loggers, key, fig, 0, caption)))

    def table(self, key: str, rows: list[dict], images: dict[str, list[torch.Tensor]] | None = None) -> None:
        self.written.append(str(write_table(self.run_dir, self.loggers, key, rows, 0, images=images)))

    def batch(self, n: int, seed_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images (a folder: its first ``n``; a split: ``n`` at random, seeded) and their labels; a folder's
        images are labelled with the model's own prediction."""
        if self.labelled:
            indices = probe_indices(len(self.dataset), n, self.cfg.seed + seed_offset)
        else:
            indices = torch.arange(min(n, len(self.dataset)))
        images, labels = stack_dataset(self.dataset, indices)
        images = images.to(self.device)
        if not self.labelled:
            labels = self.net(images).argmax(1)
        return images, labels.to(self.device)

    # -- the analyses -------------------------------------------------------------------------------------
    def deconv(self) -> None:
        c = self.cfg.deconv
        images, _ = self.batch(c.num_images)
        for layer, maps in chosen_maps(self.net, list(c.layers), c.maps_per_layer, self.cfg.seed).items():
            tiles = strongest_unit_tiles(self.net, images, layer, maps)
            self.image(f"deconv/{layer}", image_grid(tiles[None]),
                       f"{layer}: strongest unit of maps {maps} over {len(images)} images, projected")

    def top9(self) -> None:
        c = self.cfg.top9
        dataset = self.dataset if c.max_images is None else Subset(self.dataset, range(min(c.max_images,
                                                                                            len(self.dataset))))
        loader = DataLoader(dataset, batch_size=256, shuffle=False)
        maps = chosen_maps(self.net, list(c.layers), c.maps_per_layer, self.cfg.seed)
        for layer, top in top_activations_by_layer(self.net, loader, maps, k=c.k, device=self.device).items():
            projections, patches = top_k_tiles(self.net, dataset, layer, top, self.device)
            self.image(f"top{c.k}/{layer}", top_k_sheet(projections, patches),
                       f"{layer} maps {maps[layer]}: top-{c.k} projections (left) and patches (right)")
            self.table(f"top{c.k}/{layer}_table", *top_k_table(layer, top, projections, patches))

    def occlusion(self) -> None:
        c = self.cfg.occlusion
        images, labels = self.batch(c.num_images, seed_offset=1)
        patch = c.patch or max(1, min(images.shape[-2:]) // 4)
        stride = c.stride or max(1, patch // 4)
        approximate = c.get("approximate")
        approximate = OmegaConf.to_container(approximate) if isinstance(approximate, DictConfig) else approximate
        result = occlusion_maps(self.net, images, labels, patch, stride, fill=self.fill(images),
                                feature_layer=c.feature_layer, batch_size=c.batch_size,
                                approximate=drill_down(approximate, "occlusion.approximate"))
        self.figure("occlusion/panel", occlusion_figure(result, self.shown(images), labels.tolist(),
                                                        self.class_names, c.feature_layer,
                                                        "true" if self.labelled else "predicted"),
                    f"occlusion {patch}px every {stride}px")
        self.table("occlusion/table", result.table())

    def invariance(self) -> None:
        c = self.cfg.invariance
        images, labels = self.batch(c.num_images, seed_offset=2)
        fill = float(self.fill(images).mean())
        curves = {t: invariance_curves(self.net, images, labels, t, layers=list(c.layers), fill=fill)
                  for t in c.transforms}
        self.figure("invariance/curves", invariance_figure(curves, labels.tolist(), self.class_names),
                    f"invariance to {', '.join(c.transforms)}")
        self.table("invariance/table", [row for cv in curves.values() for row in cv.table()])

    def correspondence(self) -> None:
        c = self.cfg.correspondence
        if self.labelled:
            chosen = images_of_class(self.dataset, c.class_index, c.num_images)
            if len(chosen) < 2:
                raise InvalidValueError(f"correspondence.class_index={c.class_index}: fewer than 2 images of that "
                                        "class")
            images, _ = stack_dataset(self.dataset, chosen)
        else:
            images, _ = stack_dataset(self.dataset, range(min(c.num_images, len(self.dataset))))
        images = images.to(self.device)
        height, width = images.shape[-2:]
        parts = {name: [_box(frac, height, width)] * len(images) for name, frac in c.parts.items()}
        fill = float(self.fill(images).mean())
        result = correspondence(self.net, images, parts, layers=list(c.layers), n_random=c.n_random, fill=fill,
                                seed=self.cfg.seed)
        self.table("correspondence/table", result.table())
        # Fig. 8: the images (columns) with each part occluded (rows).
        rows = [self.shown(images)] + [self.shown(occlude_boxes(images, boxes, fill)) for boxes in parts.values()]
        self.image("correspondence/occluded", image_grid(torch.stack(rows).cpu(), normalise="minmax"),
                   f"rows: original, {', '.join(parts)} occluded")
        for row in result.table():
            log.info("correspondence %8s %6s: Delta = %.3f +- %.3f", row["occlusion"], row["layer"], row["delta_mean"],
                     row["delta_std"])

    def fill(self, images: torch.Tensor) -> torch.Tensor:
        """The paper's grey, the dataset mean, per channel ``[C]``."""
        return self.inputs.fill(images)

    def shown(self, images: torch.Tensor) -> torch.Tensor:
        return self.inputs.shown(images).cpu()


class DatamoduleInputs:
    """A datamodule's inputs as the analyses see them: its normalisation undone for showing, and its grey."""

    def __init__(self, datamodule):
        self.preprocess, self.mean = datamodule.preprocess, datamodule.mean

    def shown(self, images: torch.Tensor) -> torch.Tensor:
        return displayable(images, self.preprocess, self.mean)

    def fill(self, images: torch.Tensor) -> torch.Tensor:
        """0 after mean-image subtraction, else the images' channel means."""
        if self.preprocess.mean_image:
            return torch.zeros(images.shape[1], device=images.device)
        return images.mean(dim=(0, 2, 3))


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
                                "builder, or {_target_: ...}> (with weights=<state_dict file>)")
    if cfg.get("network") is not None:
        if str(cfg.images) == "test":
            raise InvalidValueError("images=test: with network=..., there is no training run to take a test split "
                                    "from; give images=<a folder of photographs>")
        InputNormalization(**OmegaConf.to_container(cfg.input, resolve=True))
    elif cfg.get("weights") is not None:
        raise InvalidValueError(f"weights={cfg.weights}: only with network=...; a checkpoint holds its weights")
    trust_option(cfg)


def resolve_layers(cfg: DictConfig, net: torch.nn.Module) -> None:
    """Fill the layer lists left null with the network's defaults, and check every layer named, so that a
    wrong name stops the run before any analysis with the valid ones listed."""
    convs, invariance = default_conv_layers(net), default_invariance_layers(net)
    defaults = {("deconv", "layers"): convs, ("top9", "layers"): convs, ("occlusion", "feature_layer"): convs[-1],
                ("invariance", "layers"): invariance, ("correspondence", "layers"): [convs[-1], invariance[-1]]}
    with open_dict(cfg):
        for (group, key), value in defaults.items():
            if cfg[group].get(key) is None:
                cfg[group][key] = value
    for group, key in (("deconv", "layers"), ("top9", "layers")):
        for layer in cfg[group][key]:
            try:
                check_projectable(net, layer)
            except ValueError as err:
                raise InvalidValueError(f"{group}.{key}: {err}") from err
    for key, layers in (("occlusion.feature_layer", [cfg.occlusion.feature_layer]),
                        ("invariance.layers", cfg.invariance.layers),
                        ("correspondence.layers", cfg.correspondence.layers)):
        try:
            check_feature_layers(net, list(layers))
        except ValueError as err:
            raise InvalidValueError(f"{key}: {err}") from err


def data_config(cfg: DictConfig) -> DictConfig:
    """``data`` from the command line, else the one the checkpoint's run was trained with."""
    if cfg.get("data") is not None:
        return cfg.data
    run_config = Path(cfg.ckpt_path).resolve().parent.parent / "config.yaml"
    if not run_config.is_file():
        raise InvalidValueError(f"data: not given and {run_config} (the checkpoint run's config) does not exist; pass "
                                "data=<fashion_mnist|cifar10|imagenet> to say which data the model was trained on")
    return OmegaConf.load(run_config).data


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
        net = load_weights(build_network(network), cfg.get("weights"), trust_option(cfg)).to(device).eval()
        normalization = InputNormalization(**OmegaConf.to_container(cfg.input, resolve=True))
        dataset = ImageFiles(os.path.expanduser(str(cfg.images)), normalization.transform())
        labelled, inputs, class_names = False, normalization, None
    else:
        pretrained = load_pretrained(cfg.ckpt_path, key="ckpt_path", trusted=trust_option(cfg))
        net = pretrained_network(pretrained).to(device)
        datamodule = instantiate(data_config(cfg), _convert_="all")
        if pretrained.mean_image is not None and datamodule.preprocess.mean_image:
            datamodule.mean = pretrained.mean_image  # the inputs normalised as the network was trained
        datamodule.prepare_data()
        datamodule.setup("test")
        if str(cfg.images) == "test":
            dataset, labelled = datamodule.analysis_dataset("test"), True
        else:
            dataset = ImageFiles(os.path.expanduser(str(cfg.images)),
                                 photo_transform(datamodule.preprocess, datamodule.mean, datamodule.num_channels))
            labelled = False
        inputs, class_names = DatamoduleInputs(datamodule), getattr(datamodule, "classes", None)
    resolve_layers(cfg, net)
    job = Analysis(cfg, net, dataset, labelled, run.dir, run.open_loggers(cfg), device, inputs, class_names)
    run.record["outputs"] = job.written
    with torch.no_grad():
        for name in cfg.analyses:
            getattr(job, name)()
    log.info("analyses written to %s", run.dir)


main = hydra_entry_point(analyze, "analyze")

if __name__ == "__main__":
    main()
