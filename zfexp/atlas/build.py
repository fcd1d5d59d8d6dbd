"""One atlas, whoever asks for it (``python -m zfexp.atlas`` or the ``Atlas`` callback): the units computed, the
site written, the tables handed to the loggers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from zfexp.atlas.site import write_site
from zfexp.atlas.tables import layer_table
from zfexp.atlas.units import AtlasLayer, atlas_layers
from zfexp.recipes import Inputs

log = logging.getLogger(__name__)

# write_table(key, rows, image columns): a table to the run dir and every logger (the caller's step and keys).
TableWriter = Callable[[str, list[dict], dict[str, list[torch.Tensor]]], Any]


def write_atlas(net: nn.Module, dataset: Dataset, layers: Sequence[str], out: Path, inputs: Inputs, labelled: bool,
                device: torch.device, k: int = 9, about: Mapping[str, Any] | None = None,
                write_table: TableWriter | None = None, batch_size: int = 256, cache: Path | None = None,
                run_config: str | None = None, metrics: Mapping[str, Any] | None = None) -> list[AtlasLayer]:
    """The atlas of every map of ``layers`` over ``dataset`` in ``out`` (``index.html`` its entry), and with
    ``write_table`` a table per layer (``atlas/<layer>``). ``net`` in eval mode on ``device``; ``about``: what the
    index says of the network and the images. Returns the layers' numbers."""
    start = time.perf_counter()
    with torch.no_grad():
        computed = atlas_layers(net, dataset, layers, k, device, inputs.shown, labelled, batch_size, cache)
    seconds = time.perf_counter() - start
    about = {**(about or {}), "layers": ", ".join(layers), "maps": sum(layer.maps for layer in computed), "top-k": k}
    pages = write_site(out, computed, inputs.class_names, about, run_config, metrics)
    if write_table is not None:
        for layer in computed:
            rows, images = layer_table(layer, inputs.class_names)
            write_table(f"atlas/{layer.name}", rows, images)
    log.info("atlas: %d maps of %d layers (%.1f s to compute, %.1f s in all), %d pages in %s",
             about["maps"], len(computed), seconds, time.perf_counter() - start, len(pages), out / "index.html")
    return computed
