"""Lightning callbacks: thin glue that schedules an analysis from ``zfexp`` and logs its result."""

from callbacks.atlas import Atlas
from callbacks.deconv_snapshots import DeconvSnapshots
from callbacks.filter_diagnostics import FilterDiagnostics
from callbacks.filter_renorm import FilterRenorm
from callbacks.guided_backprop import GuidedBackpropSnapshots
from callbacks.invariance_curves import InvarianceCurves
from callbacks.model_checkpoints import BestCheckpoint, ResumeCheckpoint
from callbacks.occlusion_maps import OcclusionMaps
from callbacks.top_activations import TopActivations
from callbacks.training_speed import TrainingSpeed

__all__ = ["Atlas", "BestCheckpoint", "DeconvSnapshots", "FilterDiagnostics", "FilterRenorm", "GuidedBackpropSnapshots",
           "InvarianceCurves", "OcclusionMaps", "ResumeCheckpoint", "TopActivations", "TrainingSpeed"]
