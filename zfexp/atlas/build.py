"""One atlas, whoever asks for it (``python -m zfexp.atlas`` or the ``Atlas`` callback): the one pass for every
layer's top-k, then layer by layer and a chunk of maps at a time the units projected, their pictures written and
their table rows kept; the pages, the index and the tables last."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from zfexp.analysis.layer_choice import conv_maps
from zfexp.analysis.unit_crops import tile_size
from zfexp.atlas.site import layer_dir, write_index, write_layer_pages, write_summary, write_unit_images
from zfexp.atlas.tables import LayerTable
from zfexp.atlas.units import AtlasLayer, layer_chunks, maps_per_chunk, top_k_every_map
from zfexp.recipes import Inputs
from zfexp.runs.progress import progress

log = logging.getLogger(__name__)

# write_table(key, rows, image columns): a table to the run dir and every logger (the caller's step and keys).
TableWriter = Callable[[str, list[dict], dict[str, list[torch.Tensor]]], Any]


def write_atlas(net: nn.Module, dataset: Dataset, layers: Sequence[str], out: Path, inputs: Inputs, labelled: bool,
                device: torch.device, k: int = 9, about: Mapping[str, Any] | None = None,
                write_table: TableWriter | None = None, batch_size: int = 256, num_workers: int = 0,
                cache_dir: Path | None = None, cache_key: str | None = None, run_config: str | None = None,
                metrics: Mapping[str, Any] | None = None) -> list[AtlasLayer]:
    """The atlas of every map of ``layers`` over ``dataset`` (``dataset[i] = (image [C, H, W], label)``) in
    ``out`` (``index.html`` its entry), and with ``write_table`` a table per layer (``atlas/<layer>``). ``net``
    in eval mode on ``device``; ``about``: what the index says of the network and the images; ``cache_dir`` and
    ``cache_key``: where the top-k pass is kept (:func:`~zfexp.atlas.units.fingerprint`). Returns the layers'
    numbers."""
    start = time.perf_counter()
    image = dataset[0][0]
    with torch.no_grad():
        top = top_k_every_map(net, dataset, layers, k, device, batch_size, num_workers, cache_dir, cache_key)
    channels, height, width = image.shape
    first_conv = _first_conv_shown(net, (channels, height, width))
    computed = []
    for layer in progress(layers, len(layers), f"atlas: projecting the top-{k} of every map", unit="layer"):
        folder, table = out / layer_dir(layer), LayerTable(inputs.class_names)
        tile = tile_size(net, layer, image[None])
        chunk_maps = maps_per_chunk(k, image.shape, tile)
        predicted: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        for chunk in layer_chunks(net, dataset, layer, top[layer], device, inputs.shown, labelled,
                                  layer == first_conv, chunk_maps):
            write_unit_images(folder, chunk)
            table.add(chunk)
            predicted.append(chunk.predicted)
            if chunk.labels is not None:
                labels.append(chunk.labels)
        summary = AtlasLayer(layer, top[layer], torch.cat(predicted), torch.cat(labels) if labels else None, tile,
                             layer == first_conv)
        write_layer_pages(folder, summary, inputs.class_names)
        if write_table is not None:
            write_table(f"atlas/{layer}", table.rows, table.images)
        computed.append(summary)
    about = {**(about or {}), "layers": ", ".join(layers), "maps": sum(layer.maps for layer in computed), "top-k": k}
    write_index(out, computed, about, run_config, metrics)
    write_summary(out, computed, inputs.class_names, about)
    log.info("atlas: %d maps of %d layers in %.1f s: %s", about["maps"], len(computed), time.perf_counter() - start,
             out / "index.html")
    return computed


def _first_conv_shown(net: nn.Module, image_shape: tuple[int, int, int]) -> str | None:
    """The first conv the forward runs, whose filters the atlas shows where they are pictures (1 or 3 input
    channels)."""
    ran = conv_maps(net, image_shape).ran
    if not ran:
        return None
    conv = net.get_submodule(ran[0])
    return ran[0] if isinstance(conv, nn.Conv2d) and conv.in_channels // conv.groups in (1, 3) else None
