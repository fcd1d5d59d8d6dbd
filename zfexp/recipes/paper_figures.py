"""One function per figure of the paper: the engine run on a network and inputs, the results handed to a sink.
Each takes the network in eval mode, under ``torch.no_grad()`` (the deconvnet turns autograd on where it needs
it), on the device of ``images``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zfexp.analysis import correspondence, invariance_curves, occlude_boxes, occlusion_maps, top_activations_by_layer
from zfexp.analysis.filter_norms import conv_layers, filter_statistics
from zfexp.analysis.occlusion import OcclusionResult
from zfexp.analysis.unit_crops import strongest_unit_tiles, top_k_tiles
from zfexp.data.classes import class_name
from zfexp.figures.feature_tiles import filter_grid, top_k_sheet, top_k_table
from zfexp.figures.grid import image_grid
from zfexp.figures.plots import invariance_figure, occlusion_figure
from zfexp.recipes.inputs import Inputs, occlusion_geometry
from zfexp.recipes.sink import Sink

log = logging.getLogger(__name__)


def deconv_snapshot(net: nn.Module, images: torch.Tensor, maps: Mapping[str, list[int]], sink: Sink,
                    rule: str = "deconvnet") -> dict[str, torch.Tensor]:
    """Fig. 4: per layer, each chosen map's strongest unit over ``images [N, C, H, W]``, projected to pixels and
    cropped to its receptive field: image ``deconv/<layer>``. Returns the tiles ``[K, C, s, s]`` by layer."""
    tiles = {}
    for layer, chosen in maps.items():
        tiles[layer] = strongest_unit_tiles(net, images, layer, chosen, rule=rule)
        sink.image(f"deconv/{layer}", image_grid(tiles[layer][None]),
                   f"{layer}: strongest unit of maps {chosen} over {len(images)} images, projected")
    return tiles


def guided_backprop(net: nn.Module, images: torch.Tensor, maps: Mapping[str, list[int]], sink: Sink,
                    ) -> dict[str, torch.Tensor]:
    """Guided backpropagation (Springenberg et al. 2015) beside the deconvnet: per layer, each chosen map's
    strongest unit over ``images [N, C, H, W]`` projected by both rules: image ``guided_backprop/<layer>`` (rows:
    the maps; the deconvnet's projection left, guided backpropagation's right). Returns the tiles
    ``[K, 2, C, s, s]`` by layer."""
    tiles = {}
    for layer, chosen in maps.items():
        tiles[layer] = torch.stack([strongest_unit_tiles(net, images, layer, chosen, rule=rule)
                                    for rule in ("deconvnet", "guided")], dim=1)
        sink.image(f"guided_backprop/{layer}", image_grid(tiles[layer]),
                   f"{layer} maps {chosen}: deconvnet (left), guided backprop (right)")
    return tiles


def top_k(net: nn.Module, dataset: Dataset, maps: Mapping[str, list[int]], k: int, device: torch.device,
          sink: Sink, class_names: Sequence[str] | None = None, batch_size: int = 256) -> None:
    """Fig. 2: the top-``k`` activations of every chosen map over ``dataset`` (one pass for all layers), each
    projected beside the image patch it sees: image ``top<k>/<layer>`` and table ``top<k>/<layer>_table``
    (with the network's prediction for each image, by name when ``class_names`` are known)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for layer, top in top_activations_by_layer(net, loader, dict(maps), k=k, device=device).items():
        projections, patches, predicted = top_k_tiles(net, dataset, layer, top, device)
        sink.image(f"top{k}/{layer}", top_k_sheet(projections, patches),
                   f"{layer} maps {maps[layer]}: top-{k} projections (left) and patches (right)")
        rows, images = top_k_table(layer, top, projections, patches)
        for row, label in zip(rows, predicted.flatten().tolist(), strict=True):  # rows: map, then rank
            row["predicted"] = label
            if class_names is not None:
                row["predicted_class"] = class_name(label, class_names)
        sink.table(f"top{k}/{layer}_table", rows, images)


def occlusion(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, inputs: Inputs, sink: Sink,
              feature_layer: str, patch: int | None = None, stride: int | None = None,
              batch_size: int | None = None, truth: str = "true") -> OcclusionResult:
    """Fig. 7: a grey square slid over ``images``: figure ``occlusion/panel`` and table ``occlusion/table``.
    ``labels [N]`` are the classes followed (``truth``: ``"true"`` labels, or the network's ``"predicted"``)."""
    patch, stride = occlusion_geometry(min(images.shape[-2:]), patch, stride)
    result = occlusion_maps(net, images, labels, patch, stride, fill=inputs.fill(images), feature_layer=feature_layer,
                            batch_size=batch_size)
    caption = f"occlusion {patch}px every {stride}px"
    sink.figure("occlusion/panel", occlusion_figure(result, inputs.shown(images).cpu(), labels.tolist(),
                                                    inputs.class_names, feature_layer, truth), caption)
    rows = result.table()
    if inputs.class_names is not None:  # the most probable class by name too
        for row in rows:
            row["top_class"] = class_name(row["top_label"], inputs.class_names)
    sink.table("occlusion/table", rows)
    return result


def invariance(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, transforms: Sequence[str],
               layers: Sequence[str], inputs: Inputs, sink: Sink) -> None:
    """Fig. 5: feature distances and the class probability under each of ``transforms``: figure
    ``invariance/curves`` and table ``invariance/table``."""
    fill = float(inputs.fill(images).mean())
    curves = {t: invariance_curves(net, images, labels, t, layers=list(layers), fill=fill) for t in transforms}
    sink.figure("invariance/curves", invariance_figure(curves, labels.tolist(), inputs.class_names),
                f"invariance to {', '.join(transforms)}")
    sink.table("invariance/table", [row for curve in curves.values() for row in curve.table()])


def filters(net: nn.Module, layer: str, images: torch.Tensor, sink: Sink) -> dict[str, float]:
    """Fig. 6: ``layer``'s filters as image ``filters/<layer>``; per conv layer, the fraction of dead filters
    (never active on ``images``) and the filters' RMS, as scalars (returned too)."""
    sink.image(f"filters/{layer}", filter_grid(conv_layers(net, [layer])[layer].weight), f"{layer} filters")
    stats = filter_statistics(net, images)
    sink.scalars(stats)
    return stats


def correspondence_table(net: nn.Module, images: torch.Tensor,
                         parts: Mapping[str, Sequence[tuple[int, int, int, int]]],
                         layers: Sequence[str], inputs: Inputs, sink: Sink, n_random: int = 10,
                         seed: int = 0) -> None:
    """Table 1: the same part occluded in every image (``parts``: name -> one box per image), against random
    boxes: table ``correspondence/table``, and Fig. 8's image ``correspondence/occluded`` (rows: the images,
    then each part occluded)."""
    fill = float(inputs.fill(images).mean())
    result = correspondence(net, images, parts, layers=list(layers), n_random=n_random, fill=fill, seed=seed)
    sink.table("correspondence/table", result.table())
    rows = [inputs.shown(images)] + [inputs.shown(occlude_boxes(images, boxes, fill)) for boxes in parts.values()]
    sink.image("correspondence/occluded", image_grid(torch.stack(rows).cpu(), normalise="minmax"),
               f"rows: original, {', '.join(parts)} occluded")
    for row in result.table():
        log.info("correspondence %8s %6s: Delta = %.3f +- %.3f", row["occlusion"], row["layer"], row["delta_mean"],
                 row["delta_std"])
