"""``python -m zfexp.atlas``: the atlas of every unit of a checkpoint's network, or of any network (see
``conf/atlas.yaml``), written to ``logs/atlas/runs/<time>/atlas/index.html`` and a W&B table per layer;
``atlas.json`` in the run dir records what was looked at and where the site is."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import Subset

from zfexp.analysis.layer_choice import check_drawn_layers, default_conv_layers
from zfexp.atlas.build import write_atlas
from zfexp.atlas.units import fingerprint
from zfexp.checks import one_of, positive_int
from zfexp.data.classes import dataset_size
from zfexp.errors import InvalidValueError
from zfexp.runs.devices import check_device, device_of
from zfexp.runs.lifecycle import Run, hydra_entry_point, task_wrapper
from zfexp.runs.outputs import write_table
from zfexp.subjects import check_subject_config, describe_subject, load_subject

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Stop on a bad value before anything is loaded."""
    check_device(cfg.device)
    check_subject_config(cfg)
    positive_int("top_k", cfg.top_k)
    positive_int("batch_size", cfg.batch_size)
    positive_int("max_images", cfg.max_images, null="every image")
    one_of("cache", cfg.cache, (True, False), f"true: keep the top-k pass in cache_dir={cfg.cache_dir}")
    if cfg.layers is not None and (isinstance(cfg.layers, str) or not all(isinstance(x, str) for x in cfg.layers)):
        raise InvalidValueError(f"layers={cfg.layers}: give a list of layer names ([conv1,conv5], [layer1.0.conv1]) "
                                "or null for the layers zfexp.analyze draws")


def checkpoint_run(ckpt_path: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """The ``config.yaml`` text and ``metrics.json`` of the run a checkpoint comes from, when they sit beside its
    ``checkpoints/`` folder."""
    if ckpt_path is None:
        return None, None
    run = Path(ckpt_path).expanduser().resolve().parent.parent
    config, metrics = run / "config.yaml", run / "metrics.json"
    return (config.read_text() if config.is_file() else None,
            json.loads(metrics.read_text()) if metrics.is_file() else None)


@task_wrapper("atlas.json")
def atlas(cfg: DictConfig, run: Run) -> None:
    """The atlas of ``cfg``'s network and images in ``<run dir>/atlas/``."""
    check_config(cfg)
    device = device_of(cfg.device)
    run.record.update(describe_subject(cfg))
    subject = load_subject(cfg, device)
    run.record.update(subject.record)
    dataset = subject.dataset
    if cfg.max_images is not None and cfg.max_images < dataset_size(dataset):
        dataset = Subset(dataset, range(cfg.max_images))
    layers = list(cfg.layers) if cfg.layers is not None else default_conv_layers(subject.net, subject.image_shape)
    check_drawn_layers("layers", subject.net, layers, subject.image_shape)  # before any work
    described = f"{cfg.get('ckpt_path') or cfg.get('network')}|{cfg.images}|{cfg.get('data')}|{cfg.get('input')}"
    key = fingerprint(subject.net, dataset, described, layers, cfg.top_k)
    cache = Path(cfg.cache_dir) / f"top{cfg.top_k}_{key}.pt" if cfg.cache else None
    loggers = run.open_loggers(cfg)
    run_config, metrics = checkpoint_run(cfg.get("ckpt_path"))
    about = {"network": cfg.get("ckpt_path") or cfg.get("network"), "weights": cfg.get("weights"),
             "images": f"{dataset_size(dataset)} from {cfg.images}"}
    out = run.dir / "atlas"
    computed = write_atlas(
        subject.net, dataset, layers, out, subject.inputs, subject.labelled, device, cfg.top_k,
        {k: v for k, v in about.items() if v is not None},
        lambda key, rows, images: write_table(run.dir, loggers, key, rows, 0, images=images),
        cfg.batch_size, cache, run_config, metrics)
    run.record.update(site=str(out / "index.html"), layers={layer.name: layer.maps for layer in computed},
                      cache=str(cache) if cache is not None else None)


main = hydra_entry_point(atlas, "atlas")

if __name__ == "__main__":
    main()
