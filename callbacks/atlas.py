"""``Atlas``: at the end of fit, the atlas of every unit (:mod:`zfexp.atlas`) of the trained network over the
validation images: a static site in ``<run dir>/atlas/`` and a W&B table per layer (``atlas/<layer>``). Off by
default: ``callbacks=[paper,atlas]``."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.network_layers import evaluating, layers_or_defaults, network_of
from callbacks.scheduled_analysis import ScheduledAnalysis, eval_dataset
from callbacks.training_outputs import inputs_of, log_table, run_dir
from zfexp.atlas import write_atlas
from zfexp.checks import positive_int


class Atlas(ScheduledAnalysis):
    """Args:
        layers: the layers (``None``: conv1..conv5 when the network has them, else five of its convs spread over
            its depth); every map of each;
        top_k: units per map (9, as Fig. 2);
        max_images: the first validation images searched (``None``: all);
        batch_size: images per forward of the pass that finds every map's top units.
    """

    def __init__(self, layers: Sequence[str] | None = None, top_k: int = 9, max_images: int | None = None,
                 batch_size: int = 256):
        super().__init__()  # no epochs: the end of fit only
        positive_int(f"{self.config_key}.top_k", top_k)
        positive_int(f"{self.config_key}.max_images", max_images, null="every validation image")
        positive_int(f"{self.config_key}.batch_size", batch_size)
        self.layers, self.top_k = None if layers is None else list(layers), top_k
        self.max_images, self.batch_size = max_images, batch_size
        self.chosen_layers: list[str] = []  # named in setup: the layers given, or the network's defaults

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.chosen_layers = layers_or_defaults(f"{self.config_key}.layers", pl_module, self.layers)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        dataset = eval_dataset(trainer, self.max_images)
        about = {"network": type(net).__name__, "images": f"{len(dataset)} validation images",
                 "epochs trained": trainer.current_epoch, "steps": trainer.global_step}
        with evaluating(net):
            write_atlas(net, dataset, self.chosen_layers, run_dir(trainer) / "atlas", inputs_of(trainer), True,
                        pl_module.device, self.top_k, about,
                        lambda key, rows, images: log_table(trainer, key, rows, epoch, images),
                        self.batch_size)
