"""The atlas as tables, one per layer: a row per map with its top activation, its strongest unit's image and
classes, and as image cells its strongest unit's projection, its top-k projections and their image patches
(each a 3x3 block, as Fig. 2): a W&B table to sort and filter by activation or class, and a CSV of the numbers
in the run dir. The cells are small copies (at most ``THUMBNAIL`` pixels a tile), so a table of 512 maps at
224 px stays a few hundred MB while it is built."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zfexp.analysis.unit_crops import resize_tiles
from zfexp.atlas.units import UnitChunk
from zfexp.data.classes import class_name
from zfexp.figures.feature_tiles import tile_images, unit_grid

THUMBNAIL = 48  # pixels, the side of a tile in a table cell at most


class LayerTable:
    """The rows and image cells of one layer's table, added a chunk of maps at a time."""

    def __init__(self, class_names: Sequence[str] | None):
        self.class_names = class_names
        self.rows: list[dict] = []
        self.images: dict[str, list[torch.Tensor]] = {"strongest": [], "projections": [], "patches": []}

    def add(self, chunk: UnitChunk) -> None:
        """A row per map of ``chunk``: ``layer, map, top_activation, mean_top_k, image`` (the dataset index of the
        strongest unit's image), its predicted class (and true class, for labelled images)."""
        for i, channel in enumerate(chunk.top.channels.tolist()):
            row = {"layer": chunk.layer, "map": int(channel), "top_activation": float(chunk.top.values[i, 0]),
                   "mean_top_k": float(chunk.top.values[i].mean()), "image": int(chunk.top.indices[i, 0]),
                   "predicted": class_name(int(chunk.predicted[i, 0]), self.class_names)}
            if chunk.labels is not None:
                row["true"] = class_name(int(chunk.labels[i, 0]), self.class_names)
            self.rows.append(row)
        projections, patches = _thumbnails(chunk.projections), _thumbnails(chunk.crops)
        self.images["strongest"] += tile_images(projections[:, 0], "symmetric")
        self.images["projections"] += [unit_grid(tiles, "symmetric") for tiles in projections]
        self.images["patches"] += [unit_grid(tiles, "minmax") for tiles in patches]


def _thumbnails(tiles: torch.Tensor) -> torch.Tensor:
    """``[M, k, C, s, s]`` tiles at most :data:`THUMBNAIL` pixels on a side."""
    return tiles if tiles.shape[-1] <= THUMBNAIL else resize_tiles(tiles, THUMBNAIL)
