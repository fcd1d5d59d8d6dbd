"""``FilterDiagnostics`` (Fig. 6): the layer-1 filters as an image, the fraction of dead filters per conv
layer (never active on the probe set) and filter RMS statistics, as scalars."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.scheduled_analysis import ProbedAnalysis, evaluating, log_image, log_scalars, network_of
from zfexp.analysis import conv_layers, filter_rms, layer_activations
from zfexp.figures.feature_tiles import filter_grid


class FilterDiagnostics(ProbedAnalysis):
    """Args:
        epochs: when to run (1 = after the first epoch); the end of fit always runs.
        first_layer: the conv layer whose filters are drawn (paper: conv1).
        probe_size: validation images on which a filter must fire at least once not to count as dead.
    """

    def __init__(self, epochs: Sequence[int] = (), first_layer: str = "conv1", probe_size: int = 256, seed: int = 0):
        super().__init__(epochs, probe_size, seed)
        self.first_layer = first_layer

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        conv_layers(network_of(pl_module), [self.first_layer])  # names a bad layer before training

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        net = network_of(pl_module)
        log_image(trainer, f"filters/{self.first_layer}", filter_grid(net.get_submodule(self.first_layer).weight),
                  caption=f"{self.first_layer} filters", epoch=epoch)
        images, _ = self.probe_batch(trainer, pl_module.device)
        stats = {}
        convs = conv_layers(net)
        with evaluating(net):
            all_acts = layer_activations(net, images, list(convs))  # one pass
            for name, conv in convs.items():
                acts = all_acts[name]  # [N, C, H, W], post-ReLU
                dead = (acts.amax(dim=(0, 2, 3)) <= 0).float().mean()
                rms = filter_rms(conv.weight)
                stats.update({f"filters/dead_frac/{name}": dead.item(), f"filters/rms_mean/{name}": rms.mean().item(),
                              f"filters/rms_max/{name}": rms.max().item()})
        log_scalars(trainer, stats)
