"""``OcclusionMaps`` (Fig. 7): a grey square slid over fixed probe images; the panel as a figure and the
numbers as a table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L

from callbacks.scheduled_analysis import (
    ProbedAnalysis,
    check_layers,
    class_names,
    evaluating,
    for_display,
    log_figure,
    log_table,
    network_of,
    occluder_fill,
)
from zfexp.analysis import occlusion_maps
from zfexp.analysis.occlusion import drill_down
from zfexp.checks import positive_int
from zfexp.errors import InvalidValueError
from zfexp.figures.plots import occlusion_figure


class OcclusionMaps(ProbedAnalysis):
    """Args:
        epochs: when to run besides the end of fit (1 = after the first epoch).
        patch, stride: the square's side and step in pixels; ``None``: a quarter of the image side, and a
            quarter of the patch.
        feature_layer: the conv layer whose strongest map is followed (paper: layer 5).
        probe_size: validation images (chosen once, seeded, kept in the checkpoint).
        batch_size: occluded copies per forward batch.
        approximate: ``None`` (every position computed), ``true`` (the approximate mode with its defaults), or
            the fields of :class:`zfexp.analysis.DrillDown` (``{coarse: null, threshold: 0.01}``): the fine grid
            only where a coarse one shows an effect; the caption and the table say which positions were computed.
    """

    def __init__(self, epochs: Sequence[int] = (), patch: int | None = None, stride: int | None = None,
                 feature_layer: str = "conv5", probe_size: int = 4, batch_size: int = 256, seed: int = 0,
                 approximate: Mapping[str, Any] | bool | None = None):
        super().__init__(epochs, probe_size, seed)
        # Checked now (before training) by building it.
        self.approximate = drill_down(approximate, f"{self.config_key}.approximate")
        positive_int(f"{self.config_key}.patch", patch, null="a quarter of the image side")
        positive_int(f"{self.config_key}.stride", stride, null="a quarter of the patch")
        positive_int(f"{self.config_key}.batch_size", batch_size)
        self.patch, self.stride, self.feature_layer, self.batch_size = patch, stride, feature_layer, batch_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        check_layers(f"{self.config_key}.feature_layer", network_of(pl_module), [self.feature_layer])
        size = getattr(pl_module, "hparams", {}).get("input_size")
        if self.patch is not None and size is not None and self.patch > size:
            raise InvalidValueError(f"{self.config_key}.patch={self.patch} is larger than the {size}x{size} input; "
                                    f"valid: 1..{size}")

    def geometry(self, image_side: int) -> tuple[int, int]:
        patch = self.patch or max(1, image_side // 4)
        return patch, self.stride or max(1, patch // 4)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        images, labels = self.probe_batch(trainer, pl_module.device)
        patch, stride = self.geometry(min(images.shape[-2:]))
        with evaluating(net):
            result = occlusion_maps(net, images, labels, patch, stride, fill=occluder_fill(trainer, images),
                                    feature_layer=self.feature_layer, batch_size=self.batch_size,
                                    approximate=self.approximate)
        fig = occlusion_figure(result, for_display(trainer, images).cpu(), labels.tolist(), class_names(trainer),
                               self.feature_layer)
        log_figure(trainer, self.key("occlusion/panel", "occlusion_maps"), fig,
                   caption=f"occlusion {patch}px every {stride}px" + (
                       f"; approximate: {100 * result.exact_fraction:.0f}% of the positions computed"
                       if self.approximate is not None else ""), epoch=epoch)
        log_table(trainer, self.key("occlusion/table", "occlusion_maps"), result.table(), epoch=epoch)
