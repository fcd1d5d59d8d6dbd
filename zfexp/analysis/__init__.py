"""Pure analysis engines: functions of a model and tensors, with no knowledge of Lightning or files."""

from zfexp.analysis.correspondence import Correspondence, correspondence, occlude_boxes, pairwise_sign_hamming
from zfexp.analysis.deconv import DeconvNet, forward_prefix, receptive_field, receptive_field_size
from zfexp.analysis.filter_renorm import conv_layers, filter_rms, renormalize_filter_masks_, renormalize_filters_
from zfexp.analysis.invariance import TRANSFORMS, InvarianceCurves, default_values, invariance_curves, transformed
from zfexp.analysis.layers import feature_layers, layer_outputs
from zfexp.analysis.occlusion import OcclusionMaps, occluder_positions, occlusion_maps
from zfexp.analysis.top_activations import TopActivations, top_activations

__all__ = [
    "Correspondence", "correspondence", "occlude_boxes", "pairwise_sign_hamming",
    "DeconvNet", "forward_prefix", "receptive_field", "receptive_field_size",
    "conv_layers", "filter_rms", "renormalize_filter_masks_", "renormalize_filters_",
    "TRANSFORMS", "InvarianceCurves", "default_values", "invariance_curves", "transformed",
    "feature_layers", "layer_outputs",
    "OcclusionMaps", "occluder_positions", "occlusion_maps",
    "TopActivations", "top_activations",
]
