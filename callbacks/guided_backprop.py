"""``GuidedBackpropSnapshots``: for each chosen map's strongest unit on a fixed probe set, the deconvnet's
projection beside guided backpropagation's (Springenberg et al. 2015), at chosen epochs and at the end of fit.
docs/callbacks.md ("Write your own callback") walks through this file."""

from collections.abc import Sequence

from callbacks.network_layers import evaluating, layers_or_defaults, network_of
from callbacks.scheduled_analysis import ProbedAnalysis
from callbacks.training_outputs import TrainingSink
from zfexp import recipes
from zfexp.analysis.layer_choice import default_conv_layers
from zfexp.analysis.map_choice import chosen_maps
from zfexp.checks import positive_int


def conv3_and_conv5(net, image_shape):
    """The paper's conv3 and conv5, or the third and fifth of the network's default layers for images of
    ``image_shape`` ``(C, H, W)`` (else its last)."""
    layers = default_conv_layers(net, image_shape)
    return layers[2::2] or layers[-1:]


class GuidedBackpropSnapshots(ProbedAnalysis):
    """Args: epochs (besides the end of fit), conv layers (``None``: conv3 and conv5, or the third and fifth
    of the network's defaults), maps per layer, probe images, seed."""

    def __init__(self, epochs: Sequence[int] = (), layers: Sequence[str] | None = None,
                 maps_per_layer: int = 4, probe_size: int = 64, seed: int = 0):
        super().__init__(epochs, probe_size, seed)  # checks epochs and probe_size, keeps the probe in the ckpt
        positive_int(f"{self.config_key}.maps_per_layer", maps_per_layer)  # names the key, the value, what is valid
        self.layers, self.maps_per_layer = None if layers is None else list(layers), maps_per_layer
        self.chosen_layers: list[str] = []  # named in setup: the layers given, or the network's defaults

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)  # names the epochs beyond trainer.max_epochs in the log
        self.chosen_layers = layers_or_defaults(f"{self.config_key}.layers", pl_module, self.layers,
                                                default=conv3_and_conv5)  # the layers, checked before training

    def analyse(self, trainer, pl_module, epoch):  # on rank zero, at the scheduled epochs; epoch None = end
        net = network_of(pl_module)
        images, _ = self.probe_batch(trainer, pl_module.device)  # the same images every time
        maps = chosen_maps(net, self.chosen_layers, self.maps_per_layer, self.seed)  # {layer: [map, ...]}
        with evaluating(net):  # eval mode, no grad; training mode restored afterwards
            # Image guided_backprop/<layer>: one W&B key, stepped by epoch; the run dir's files keep the epoch.
            recipes.guided_backprop(net, images, maps, TrainingSink(trainer, epoch))
