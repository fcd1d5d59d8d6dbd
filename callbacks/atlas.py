"""``Atlas``: at the end of fit, the atlas of every unit (:mod:`zfexp.atlas`) of the trained network over the
validation images: a static site in ``<run dir>/atlas/`` and a W&B table per layer (``atlas/<layer>/final``).
Off by default: ``callbacks=[paper,atlas]``. Under DDP it runs on rank zero while the other ranks wait at the
end of fit (within the process group's timeout, 30 minutes by default): on a large validation set, cap it with
``max_images``."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.network_layers import evaluating, layers_or_defaults, network_of
from callbacks.scheduled_analysis import ScheduledAnalysis, eval_dataset
from callbacks.training_outputs import inputs_of, log_table, run_dir
from zfexp.atlas import write_atlas
from zfexp.atlas.units import check_layer_list, sample_images
from zfexp.checks import integer, positive_int
from zfexp.data.classes import dataset_size


class Atlas(ScheduledAnalysis):
    """Args:
        layers: the layers (``None``: conv1..conv5 when the network has them, else five of its convs spread over
            its depth); every map of each;
        top_k: units per map (9, as Fig. 2);
        max_images: validation images searched, chosen at random with ``seed`` (``None``: all);
        batch_size, num_workers: the loader of the pass that finds every map's top units.
    """

    def __init__(self, layers: Sequence[str] | None = None, top_k: int = 9, max_images: int | None = None,
                 batch_size: int = 256, num_workers: int = 0, seed: int = 0):
        super().__init__()  # no epochs: the end of fit only
        check_layer_list(f"{self.config_key}.layers", layers)
        positive_int(f"{self.config_key}.top_k", top_k)
        positive_int(f"{self.config_key}.max_images", max_images, null="every validation image")
        positive_int(f"{self.config_key}.batch_size", batch_size)
        integer(f"{self.config_key}.num_workers", num_workers, low=0)
        self.layers, self.top_k = None if layers is None else list(layers), top_k
        self.max_images, self.batch_size, self.num_workers, self.seed = max_images, batch_size, num_workers, seed
        self.chosen_layers: list[str] = []  # named in setup: the layers given, or the network's defaults

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.chosen_layers = layers_or_defaults(f"{self.config_key}.layers", pl_module, self.layers)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        dataset = sample_images(eval_dataset(trainer), self.max_images, self.seed)
        config = run_dir(trainer) / "config.yaml"  # the run's resolved config, as train.py saved it
        # Read once, at the end of fit: no training step waits for it.
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        about = {"network": type(net).__name__, "images": f"{dataset_size(dataset)} validation images",
                 "epochs trained": trainer.current_epoch, "steps": trainer.global_step}
        with evaluating(net):
            write_atlas(net, dataset, self.chosen_layers, run_dir(trainer) / "atlas", inputs_of(trainer), True,
                        pl_module.device, self.top_k, about,
                        lambda key, rows, images: log_table(trainer, key, rows, epoch, images),
                        self.batch_size, self.num_workers,
                        run_config=config.read_text() if config.is_file() else None, metrics=metrics)
