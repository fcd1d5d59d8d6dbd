"""The atlas as tables, one per layer: a row per map with its top activation and, as image cells, its strongest
unit's projection and its top-k sheet (the projections beside the image patches, as Fig. 2): a W&B table to sort
and filter by activation or class, and a CSV of the numbers in the run dir."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zfexp.atlas.units import AtlasLayer
from zfexp.data.classes import class_name
from zfexp.figures.feature_tiles import tile_images, top_k_sheet


def layer_table(layer: AtlasLayer, class_names: Sequence[str] | None,
                ) -> tuple[list[dict], dict[str, list[torch.Tensor]]]:
    """``(rows, image columns)`` of ``layer``: per map ``layer, map, top_activation, mean_top_k, image`` (the
    dataset index of the strongest unit's image), its predicted class (and true class, for labelled images);
    image columns ``strongest`` (``[3, s', s']``) and ``top_k`` (the sheet)."""
    rows = []
    for j, channel in enumerate(layer.top.channels.tolist()):
        row = {"layer": layer.name, "map": int(channel), "top_activation": float(layer.top.values[j, 0]),
               "mean_top_k": float(layer.top.values[j].mean()), "image": int(layer.top.indices[j, 0]),
               "predicted": class_name(int(layer.predicted[j, 0]), class_names)}
        if layer.labels is not None:
            row["true"] = class_name(int(layer.labels[j, 0]), class_names)
        rows.append(row)
    sheets = [top_k_sheet(layer.projections[j:j + 1], layer.crops[j:j + 1]) for j in range(layer.maps)]
    return rows, {"strongest": tile_images(layer.projections[:, 0], "symmetric"), "top_k": sheets}
