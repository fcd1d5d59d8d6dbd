"""Pure analysis engines: functions of a model and tensors, with no knowledge of Lightning or files."""

from zfexp.analysis.deconv import DeconvNet, forward_prefix, receptive_field, receptive_field_size
from zfexp.analysis.top_activations import TopActivations, top_activations
from zfexp.analysis.filter_renorm import conv_layers, filter_rms, renormalize_filter_masks_, renormalize_filters_

__all__ = ["DeconvNet", "forward_prefix", "receptive_field", "receptive_field_size", "conv_layers", "filter_rms", "renormalize_filter_masks_", "renormalize_filters_", "TopActivations", "top_activations"]
