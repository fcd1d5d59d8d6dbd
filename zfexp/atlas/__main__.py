"""``python -m zfexp.atlas``: the atlas of every unit of a checkpoint's network, or of any network (see
``conf/atlas.yaml``), written to ``logs/atlas/runs/<time>/atlas/index.html`` and a W&B table per layer;
``atlas.json`` in the run dir records what was looked at and where the site is."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zfexp.analysis.layer_choice import check_drawn_layers, default_conv_layers
from zfexp.atlas.build import write_atlas
from zfexp.atlas.units import check_layer_list, fingerprint, sample_images
from zfexp.checks import integer, one_of, positive_int
from zfexp.data.classes import dataset_size
from zfexp.errors import InvalidValueError
from zfexp.runs.devices import check_device, device_of
from zfexp.runs.lifecycle import Run, hydra_entry_point, task_wrapper
from zfexp.runs.outputs import write_table
from zfexp.subjects import check_subject_config, describe_subject, load_subject

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Stop on a bad value before anything is loaded; the cache folder is made (and must be writable) now,
    not after the pass that fills it."""
    check_device(cfg.device)
    check_subject_config(cfg)
    positive_int("top_k", cfg.top_k)
    positive_int("batch_size", cfg.batch_size)
    integer("num_workers", cfg.num_workers, low=0)
    integer("seed", cfg.seed)
    positive_int("max_images", cfg.max_images, null="every image")
    check_layer_list("layers", cfg.layers)
    one_of("cache", cfg.cache, (True, False), f"true: keep the top-k pass in cache_dir={cfg.cache_dir}")
    if cfg.cache:
        folder = Path(str(cfg.cache_dir)).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InvalidValueError(f"cache_dir={folder}: cannot be made ({err}); give a folder you can write to, "
                                    "or cache=false") from err
        if not os.access(folder, os.W_OK):
            raise InvalidValueError(f"cache_dir={folder}: not writable; give a folder you can write to, or cache=false")


def checkpoint_run(ckpt_path: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """The ``config.yaml`` text and ``metrics.json`` of the ``train.py`` run a checkpoint comes from, when the
    checkpoint still sits in that run's ``checkpoints/`` folder."""
    if ckpt_path is None:
        return None, None
    ckpt = Path(ckpt_path).expanduser().resolve()
    run = ckpt.parent.parent
    config, metrics = run / "config.yaml", run / "metrics.json"
    if ckpt.parent.name != "checkpoints" or not config.is_file():
        return None, None
    saved = OmegaConf.load(config)
    if not isinstance(saved, DictConfig) or saved.get("task_name") != "train":
        return None, None
    return config.read_text(), json.loads(metrics.read_text()) if metrics.is_file() else None


@task_wrapper("atlas.json")
def atlas(cfg: DictConfig, run: Run) -> None:
    """The atlas of ``cfg``'s network and images in ``<run dir>/atlas/``."""
    check_config(cfg)
    device = device_of(cfg.device)
    run.record.update(describe_subject(cfg))
    subject = load_subject(cfg, device)
    run.record.update(subject.record)
    dataset = sample_images(subject.dataset, cfg.max_images, cfg.seed)
    layers = list(cfg.layers) if cfg.layers is not None else default_conv_layers(subject.net, subject.image_shape)
    check_drawn_layers("layers", subject.net, layers, subject.image_shape)  # before any work
    key = None
    if cfg.cache:  # the images as the network sees them: their source, the data and input settings
        described = json.dumps({"subject": describe_subject(cfg), **subject.record,
                                "input": OmegaConf.to_container(cfg.input, resolve=True)}, sort_keys=True, default=str)
        key = fingerprint(subject.net, dataset, described, cfg.top_k)
    loggers = run.open_loggers(cfg)
    run_config, metrics = checkpoint_run(cfg.get("ckpt_path"))
    about = {"network": cfg.get("ckpt_path") or cfg.get("network"), "weights": cfg.get("weights"),
             "images": f"{dataset_size(dataset)} from {cfg.images}"}
    out = run.dir / "atlas"
    computed = write_atlas(
        subject.net, dataset, layers, out, subject.inputs, subject.labelled, device, cfg.top_k,
        {k: v for k, v in about.items() if v is not None},
        lambda table, rows, images: write_table(run.dir, loggers, table, rows, 0, images=images),
        cfg.batch_size, cfg.num_workers, Path(str(cfg.cache_dir)).expanduser() if cfg.cache else None, key,
        run_config, metrics)
    run.record.update(site=str(out / "index.html"), layers={layer.name: layer.maps for layer in computed},
                      cache_key=key)


main = hydra_entry_point(atlas, "atlas")

if __name__ == "__main__":
    main()
