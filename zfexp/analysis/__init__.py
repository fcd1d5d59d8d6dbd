"""Pure analysis engines: functions of a model and tensors, with no knowledge of Lightning or files.

Each engine returns a result type named for it (``OcclusionResult``, ``InvarianceResult``,
``TopActivationsResult``, ``CorrespondenceResult``); layers are read with ``activations`` and located with
``geometry``.
"""

from zfexp.analysis.activations import feature_layers, layer_activations, layer_outputs
from zfexp.analysis.correspondence import CorrespondenceResult, correspondence, occlude_boxes, pairwise_sign_hamming
from zfexp.analysis.deconv import RULES, DeconvNet
from zfexp.analysis.filter_norms import (
    FilterRenormalizer,
    conv_layers,
    filter_rms,
    renormalize_filter_masks_,
    renormalize_filters_,
)
from zfexp.analysis.geometry import forward_prefix, receptive_field, receptive_field_size
from zfexp.analysis.invariance import TRANSFORMS, InvarianceResult, default_values, invariance_curves, transformed
from zfexp.analysis.map_choice import chosen_maps, random_maps
from zfexp.analysis.network import eval_mode
from zfexp.analysis.occlusion import OcclusionResult, occluder_positions, occlusion_maps
from zfexp.analysis.top_k import TopActivationsResult, top_activations, top_activations_by_layer

__all__ = [
    "eval_mode", "feature_layers", "layer_activations", "layer_outputs",
    "CorrespondenceResult", "correspondence", "occlude_boxes", "pairwise_sign_hamming",
    "RULES", "DeconvNet",
    "FilterRenormalizer", "conv_layers", "filter_rms", "renormalize_filter_masks_", "renormalize_filters_",
    "forward_prefix", "receptive_field", "receptive_field_size",
    "TRANSFORMS", "InvarianceResult", "default_values", "invariance_curves", "transformed",
    "chosen_maps", "random_maps",
    "OcclusionResult", "occluder_positions", "occlusion_maps",
    "TopActivationsResult", "top_activations", "top_activations_by_layer",
]
