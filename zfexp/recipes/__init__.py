"""The paper's figures and tables, each written once: a recipe runs the engines of ``zfexp.analysis`` on a
network and its inputs and hands the images, figures and tables to a :class:`Sink`. The training callbacks
(``callbacks/``: W&B keys stepped by epoch, files under the run dir) and ``zfexp.analyze`` (its own run dir) are
two sinks of the same recipes, so a figure looks the same wherever it is drawn (Fig. 6 is drawn in training
only, Table 1 by ``zfexp.analyze`` only).

    Fig. 2  top_k            Fig. 4  deconv_snapshot     Fig. 5  invariance
    Fig. 6  filters          Fig. 7  occlusion           Table 1 correspondence_table
    guided backpropagation beside the deconvnet (beyond the paper): guided_backprop
"""

from zfexp.recipes.inputs import Inputs, occlusion_geometry
from zfexp.recipes.paper_figures import (
    correspondence_table,
    deconv_snapshot,
    filters,
    guided_backprop,
    invariance,
    occlusion,
    top_k,
)
from zfexp.recipes.sink import Sink

__all__ = ["Inputs", "Sink", "correspondence_table", "deconv_snapshot", "filters", "guided_backprop", "invariance",
           "occlusion", "occlusion_geometry", "top_k"]
