"""The atlas as a static site: plain HTML and PNG files that open from disk (``file://``) or through any web
server, with nothing fetched from anywhere. ``index.html`` lists the layers; a page per layer shows every map as
a tile (its strongest unit's projection); a page per map shows its top-k units as Fig. 2 does, each unit's
image patch beside its projection, with the activation and the image's true and predicted classes.

The pictures of a chunk of maps are written as soon as they are computed (:func:`write_unit_images`); the pages
need only the numbers (:func:`write_layer_pages`, :func:`write_index`) and name the pictures by convention."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zfexp.atlas.units import AtlasLayer, UnitChunk
from zfexp.data.classes import class_name
from zfexp.figures.grid import normalise_tiles

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
a { color: #1558b0; text-decoration: none; } a:hover { text-decoration: underline; }
nav { margin-bottom: 1em; } nav a { margin-right: 1.2em; }
img { image-rendering: pixelated; }
.tiles { display: flex; flex-wrap: wrap; gap: 6px; }
.tile { text-align: center; font-size: 11px; width: 84px; }
.tile img { width: 80px; height: 80px; border: 1px solid #ccc; display: block; }
.units { display: grid; grid-template-columns: repeat(3, max-content); gap: 14px 22px; }
.unit img { width: 112px; height: 112px; border: 1px solid #ccc; }
.unit { margin: 0; } .unit figcaption { font-size: 12px; line-height: 1.35; max-width: 232px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }
"""


def layer_dir(layer: str) -> str:
    """A layer's folder name: the layer's name (a module name has only letters, digits, ``_`` and ``.``, so
    ``layer1.0.conv1`` stays and no two layers share a folder); anything else becomes ``_``."""
    return re.sub(r"[^\w.-]", "_", layer)


def map_page(j: int) -> str:
    """The page of the ``j``-th map of a layer (in map order), in the layer's folder."""
    return f"map_{j:04d}.html"


def save_tile(tile: torch.Tensor, path: Path) -> str:
    """``tile [C, s, s]`` in [0, 1] (1 or 3 channels) as a PNG; returns its file name."""
    pixels = (tile.clamp(0, 1) * 255).round().to(torch.uint8)
    array = pixels[0].numpy() if pixels.shape[0] == 1 else np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())
    Image.fromarray(array).save(path, compress_level=1)
    return path.name


def page(title: str, body: str, depth: int, links: Sequence[str] = ()) -> str:
    """A whole HTML page, ``depth`` folders below the site's root: a row of links (the index first, then
    ``links``), then ``body``."""
    nav = " ".join([f"<a href=\"{'../' * depth}index.html\">atlas</a>", *links])
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<nav>{nav}</nav>\n{body}\n</body></html>\n")


def write_unit_images(folder: Path, chunk: UnitChunk) -> None:
    """The PNGs of ``chunk``'s maps under ``folder/img/``: per map its tile (the strongest unit's projection),
    each unit's patch and projection, and its filter where the chunk has them."""
    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    projections = normalise_tiles(chunk.projections, "symmetric")  # each projection scaled on its own
    crops = chunk.crops.clamp(0, 1)
    filters = normalise_tiles(chunk.filters.unsqueeze(1), "symmetric")[:, 0] if chunk.filters is not None else None
    for i in range(chunk.maps):
        j = chunk.first + i
        save_tile(projections[i, 0], images / f"tile_{j:04d}.png")
        for r in range(projections.shape[1]):
            save_tile(crops[i, r], images / f"unit_{j:04d}_{r}_patch.png")
            save_tile(projections[i, r], images / f"unit_{j:04d}_{r}_projection.png")
        if filters is not None:
            save_tile(filters[i], images / f"filter_{j:04d}.png")


def write_layer_pages(folder: Path, layer: AtlasLayer, class_names: Sequence[str] | None) -> list[Path]:
    """``folder/index.html`` (every map as a tile, in map order, with its strongest activation) and a page per
    map; returns the pages written."""
    tiles, written = [], []
    for j, channel in enumerate(layer.top.channels.tolist()):
        tiles.append(f"<div class=\"tile\"><a href=\"{map_page(j)}\"><img src=\"img/tile_{j:04d}.png\" "
                     f"alt=\"map {channel}\">{channel}</a><br>{float(layer.top.values[j, 0]):.3g}</div>")
        written.append(_write_map(folder, layer, j, class_names))
    body = (f"<h1>{html.escape(layer.name)}: {layer.maps} maps</h1>\n<p>Each map's strongest unit over the images, "
            "projected to pixels by the deconvnet and cropped to its receptive field; the number is its "
            "activation. A tile opens the map's top units.</p>\n<div class=\"tiles\">" + "".join(tiles) + "</div>")
    index = folder / "index.html"
    index.write_text(page(layer.name, body, 1, [f"<a href=\"index.html\">{html.escape(layer.name)}</a>"]))
    return [index, *written]


def _write_map(folder: Path, layer: AtlasLayer, j: int, class_names: Sequence[str] | None) -> Path:
    channel, k = int(layer.top.channels[j]), layer.top.values.shape[1]
    links = [f"<a href=\"index.html\">{html.escape(layer.name)}</a>"]
    if j > 0:
        links.append(f"<a href=\"{map_page(j - 1)}\">&larr; map {int(layer.top.channels[j - 1])}</a>")
    if j + 1 < layer.maps:
        links.append(f"<a href=\"{map_page(j + 1)}\">map {int(layer.top.channels[j + 1])} &rarr;</a>")
    units = []
    for r in range(k):
        truth = ("true: " + html.escape(class_name(int(layer.labels[j, r]), class_names)) + "<br>"
                 if layer.labels is not None else "")
        predicted = html.escape(class_name(int(layer.predicted[j, r]), class_names))
        row, col = (int(v) for v in layer.top.positions[j, r])
        units.append(
            f"<figure class=\"unit\"><img src=\"img/unit_{j:04d}_{r}_patch.png\" alt=\"image patch\"> "
            f"<img src=\"img/unit_{j:04d}_{r}_projection.png\" alt=\"projection\"><figcaption>#{r + 1}: activation "
            f"{float(layer.top.values[j, r]):.4g}<br>{truth}predicted: {predicted}<br>image "
            f"{int(layer.top.indices[j, r])}, unit at ({row}, {col})</figcaption></figure>")
    weights = (f"<p>The filter: <img src=\"img/filter_{j:04d}.png\" alt=\"filter\" style=\"width:84px;height:84px\">"
               "</p>\n" if layer.filters else "")
    body = (f"<h1>{html.escape(layer.name)}, map {channel}</h1>\n{weights}"
            f"<p>The top {k} units over the images: each image patch (left) beside the unit's deconvnet projection "
            f"(right), as in Fig. 2.</p>\n<div class=\"units\">" + "".join(units) + "</div>")
    path = folder / map_page(j)
    path.write_text(page(f"{layer.name} map {channel}", body, 1, links))
    return path


def write_index(out: Path, layers: Sequence[AtlasLayer], about: Mapping[str, Any], run_config: str | None = None,
                metrics: Mapping[str, Any] | None = None) -> Path:
    """``out/index.html``: what the atlas looks at (``about``), its layers (a link each), and the run's
    ``metrics`` and ``config.yaml`` text where known."""
    rows = "".join(
        f"<tr><td><a href=\"{layer_dir(layer.name)}/index.html\">{html.escape(layer.name)}</a></td>"
        f"<td>{layer.maps}</td><td>{layer.top.values.shape[1]}</td><td>{layer.tile} px</td>"
        f"<td>{float(layer.top.values[:, 0].max()):.4g}</td></tr>" for layer in layers)
    facts = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in about.items())
    header = "".join(f"<th>{name}</th>" for name in ("layer", "maps", "top-k", "receptive field (at most the image)",
                                                     "strongest activation"))
    body = (f"<h1>Atlas of every unit</h1>\n<table>{facts}</table>\n<h2>Layers</h2>\n<table><tr>{header}</tr>{rows}"
            "</table>\n")
    if metrics:
        shown = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_value(v))}</td></tr>"
                        for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool))
        body += f"<h2>The run's metrics</h2>\n<table>{shown}</table>\n"
    if run_config:
        body += "<h2>The run's config</h2>\n<pre>" + html.escape(run_config) + "</pre>\n"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(page("atlas", body, 0))
    return path


def _value(value: Any) -> str:
    """A metric as the index shows it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_summary(out: Path, layers: Sequence[AtlasLayer], class_names: Sequence[str] | None,
                  about: Mapping[str, Any]) -> Path:
    """``out/atlas.json``: per layer and map, each unit's image index, position, activation and classes."""
    def unit(layer: AtlasLayer, j: int, r: int) -> dict:
        row = {"image": int(layer.top.indices[j, r]), "activation": float(layer.top.values[j, r]),
               "position": [int(v) for v in layer.top.positions[j, r]],
               "predicted": class_name(int(layer.predicted[j, r]), class_names)}
        if layer.labels is not None:
            row["true"] = class_name(int(layer.labels[j, r]), class_names)
        return row

    summary = {"about": {k: str(v) for k, v in about.items()},
               "layers": {layer.name: {"folder": layer_dir(layer.name), "maps": [
                   {"map": int(c), "page": f"{layer_dir(layer.name)}/{map_page(j)}",
                    "units": [unit(layer, j, r) for r in range(layer.top.values.shape[1])]}
                   for j, c in enumerate(layer.top.channels.tolist())]} for layer in layers}}
    path = out / "atlas.json"
    path.write_text(json.dumps(summary, indent=1))
    return path
