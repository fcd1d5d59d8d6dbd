"""Occlusion sensitivity (Fig. 7): slide a grey square over the image and watch the classifier and a layer-5
feature map.

Every occluded copy goes through the network in batches; for networks that are a plain ``nn.Sequential`` of
leaf modules (ZFNet) ``occlusion_incremental`` computes each layer only where the square changes it, with
exactly the same results. Which of the two runs is chosen by the device (:func:`incremental_pays`).

``approximate=DrillDown(...)`` (opt-in) computes a coarse grid of positions everywhere and the fine grid only
where the coarse one shows an effect, and says which positions it computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zfexp.analysis.activations import eval_mode, layer_activations
from zfexp.analysis.deconv import DeconvNet
from zfexp.analysis.deconv_record import check_projectable
from zfexp.analysis.geometry import forward_prefix
from zfexp.analysis.occlusion_drilldown import (
    DrillDown,
    cells_with_effect,
    coarse_grid,
    drill_down,
    interpolate_coarse,
)
from zfexp.analysis.occlusion_incremental import IncrementalRun, sequential_leaves
from zfexp.checks import positive_int
from zfexp.errors import InvalidValueError


@dataclass
class OcclusionResult:
    """What ``occlusion_maps`` returns, for ``N`` images and an ``R x S`` grid of occluder positions.

    ``prob_true [N, R, S]``: probability of the true class with the square at each position;
    ``top_label [N, R, S]``: most probable class there; ``feature_activity [N, R, S]``: total activation of
    ``feature_map [N]`` (the map of the feature layer with the strongest activation on the unoccluded image);
    ``projection [N, C, H, W]``: that map's strongest activation on the unoccluded image, projected to pixels
    by the deconvnet; ``base_prob [N]``, ``base_label [N]``, ``base_activity [N]``: the same without occluder;
    ``rows [R]``, ``cols [S]``: the square's top-left corners; ``patch``: its side in pixels.
    """

    prob_true: torch.Tensor
    top_label: torch.Tensor
    feature_activity: torch.Tensor
    feature_map: torch.Tensor
    projection: torch.Tensor
    base_prob: torch.Tensor
    base_label: torch.Tensor
    base_activity: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    patch: int
    exact: torch.Tensor | None = None  # [N, R, S] True where computed; None: everywhere (the exact mode)

    @property
    def exact_fraction(self) -> float:
        """The share of the positions computed rather than interpolated (1.0 in the exact mode)."""
        return 1.0 if self.exact is None else float(self.exact.float().mean())

    def table(self) -> list[dict]:
        """One row per image and occluder position: what a CSV file or a W&B table holds."""
        out = []
        for i in range(self.prob_true.shape[0]):
            for r, top in enumerate(self.rows.tolist()):
                for c, left in enumerate(self.cols.tolist()):
                    out.append({"image": i, "top": top, "left": left, "patch": self.patch,
                                "prob_true": float(self.prob_true[i, r, c]), "top_label": int(self.top_label[i, r, c]),
                                "feature_map": int(self.feature_map[i]),
                                "feature_activity": float(self.feature_activity[i, r, c]),
                                "computed": True if self.exact is None else bool(self.exact[i, r, c])})
        return out

    def pixel_attribution(self, image_size: tuple[int, int]) -> torch.Tensor:
        """``[N, H, W]``: per pixel, the mean drop of the true-class probability over the occluder positions
        that cover it (0 where none does); captum's ``Occlusion`` attribution for the same settings."""
        n, height, width = self.prob_true.shape[0], *image_size
        drop = self.base_prob[:, None, None] - self.prob_true  # [N, R, S]
        total = drop.new_zeros((n, height, width))
        count = drop.new_zeros((height, width))
        for i, r in enumerate(self.rows.tolist()):
            for j, c in enumerate(self.cols.tolist()):
                total[:, r:r + self.patch, c:c + self.patch] += drop[:, i, j, None, None]
                count[r:r + self.patch, c:c + self.patch] += 1
        return total / count.clamp_min(1)


def occluder_positions(size: int, patch: int, stride: int) -> torch.Tensor:
    """Top-left corners along one side: every ``stride`` pixels, the last square clipped by the border so that
    every pixel is covered when ``stride <= patch`` (captum's convention)."""
    return torch.arange(math.ceil((size - patch) / stride) + 1) * stride


def incremental_pays(device: torch.device) -> bool:
    """Whether recomputing only the square's footprint is the faster way on ``device``: on a CPU it is (x2 to
    x4 over whole occluded copies, ``benchmarks/occlusion.py``); on a GPU, whose cost is kernel launches and
    not arithmetic, whole copies in large batches are faster (x1.3 on an H100 for zfnet at 224, 16 images,
    patch 48, stride 8)."""
    return device.type == "cpu"


@torch.no_grad()
def occlusion_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | list[int], patch: int,
                   stride: int, fill: float | torch.Tensor | None = None, feature_layer: str = "conv5",
                   batch_size: int = 64, incremental: bool | None = None,
                   probabilities: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   approximate: DrillDown | Mapping[str, Any] | bool | None = None) -> OcclusionResult:
    """Occlusion sensitivity of ``images [N, C, H, W]`` with true ``labels [N]``.

    Args:
        patch, stride: side of the square and its step, in pixels.
        fill: what the square is filled with: a number, a per-channel ``[C]`` or a full ``[C, H, W]`` tensor;
            ``None`` is 0, the dataset mean for mean-subtracted inputs (the paper's grey square).
        feature_layer: conv layer whose strongest map on the unoccluded image is followed (post-ReLU).
        batch_size: occluded copies per forward batch (memory bound).
        incremental: compute only the square's footprint at each layer; ``None``: where it is the faster way
            (:func:`incremental_pays`) and the network is a plain ``nn.Sequential`` (same results either way).
        probabilities: logits -> class probabilities (default softmax).
        approximate: a :class:`DrillDown` (or its fields as a mapping; ``True``: its defaults) for the
            approximate mode; ``None``: every position computed. The result's ``exact`` says which positions were.
    """
    n, c, height, width = images.shape
    labels = torch.as_tensor(labels, dtype=torch.long, device=images.device).flatten()
    if labels.numel() != n:
        raise InvalidValueError(f"occlusion_maps: {n} images but {labels.numel()} labels")
    for name, value in (("patch", patch), ("stride", stride), ("batch_size", batch_size)):
        positive_int(f"occlusion_maps: {name}", value)
    if patch > min(height, width):
        raise InvalidValueError(f"occlusion_maps: patch={patch} is larger than the {height}x{width} image; valid: "
                                f"1..{min(height, width)}")
    check_projectable(model, feature_layer)  # names a bad layer with the valid ones
    probabilities = probabilities or (lambda logits: logits.softmax(-1))
    fill_image = _fill_image(fill, images)
    rows, cols = occluder_positions(height, patch, stride), occluder_positions(width, patch, stride)
    approximate = drill_down(approximate)
    leaves = sequential_leaves(model)
    if incremental is None:
        incremental = leaves is not None and incremental_pays(images.device)
    if incremental and leaves is None:
        raise InvalidValueError("occlusion_maps: incremental=True needs a model that is a plain nn.Sequential of its "
                                f"leaf modules with zero-padded convs; {type(model).__name__} is not (use "
                                "incremental=False)")

    with eval_mode(model):
        # The incremental run reads the layer's features from the module that gives them (its ReLU).
        feature_module = forward_prefix(model, feature_layer)[-1][1] if incremental else None
        return _occlusion_maps(model, images, labels, patch, fill_image, feature_layer, feature_module, rows, cols,
                               batch_size, leaves if incremental else None, probabilities, approximate,
                               approximate.factor(patch, stride) if approximate is not None else 1)


def _occlusion_maps(model, images, labels, patch, fill_image, feature_layer, feature_module, rows, cols, batch_size,
                    leaves, probabilities, approximate, factor) -> OcclusionResult:
    """``occlusion_maps`` once its arguments are checked, with the model in eval mode; ``leaves``: the modules
    to run incrementally, or None."""
    n = images.shape[0]
    seen = layer_activations(model, images, [feature_layer], logits=True)
    feats = seen[feature_layer]  # [N, C_l, H_l, W_l]
    feature_map = feats.flatten(2).amax(2).argmax(1)  # [N]
    base_activity = feats[torch.arange(n), feature_map].sum((-2, -1))
    base_probs = probabilities(seen["logits"])
    base_prob, base_label = base_probs[torch.arange(n), labels], base_probs.argmax(1)
    projection = DeconvNet(model).project_units(images, feature_layer, feature_map)
    run = IncrementalRun(leaves, images, fill_image, feature_module) if leaves is not None else None

    def evaluate(where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``where [N, R, S]`` bool -> P(true class), top class and feature activity at those positions, each
        ``[M]`` in ``where``'s (image-major) order."""
        item_image, ri, ci = where.nonzero(as_tuple=True)
        item_r, item_c = rows.to(images.device)[ri], cols.to(images.device)[ci]
        logits, activity = [], []
        for start in range(0, len(item_image), batch_size):
            idx = slice(start, start + batch_size)
            if run is not None:
                out, act = run.forward(item_image[idx], item_r[idx], item_c[idx], patch, feature_map)
            else:
                out, act = _occluded_forward(model, images, fill_image, feature_layer, item_image[idx], item_r[idx],
                                             item_c[idx], patch, feature_map)
            logits.append(out)
            activity.append(act)
        probs = probabilities(torch.cat(logits))
        return probs.gather(1, labels[item_image, None])[:, 0], probs.argmax(1), torch.cat(activity)

    grid = (n, len(rows), len(cols))
    prob_true = images.new_empty(grid)
    top_label = torch.empty(grid, dtype=torch.long, device=images.device)
    activity = images.new_empty(grid)
    done = torch.zeros(grid, dtype=torch.bool, device=images.device)
    todo = torch.ones_like(done)
    if approximate is not None:
        todo = coarse_grid(len(rows), len(cols), factor, images.device).expand(grid).clone()
    for stage in ("coarse", "fine") if approximate is not None else ("all",):
        todo &= ~done
        if todo.any():  # the fine stage has nothing to do when no coarse cell shows an effect
            prob_true[todo], top_label[todo], activity[todo] = evaluate(todo)
        done |= todo
        if stage == "coarse":
            interpolate_coarse(prob_true, top_label, activity, len(rows), len(cols), factor)
            todo = cells_with_effect(prob_true, top_label, base_prob, base_label, approximate.threshold, factor,
                                      approximate.margin)
    return OcclusionResult(
        prob_true=prob_true, top_label=top_label, feature_activity=activity, feature_map=feature_map,
        projection=projection, base_prob=base_prob, base_label=base_label, base_activity=base_activity, rows=rows,
        cols=cols, patch=patch, exact=done if approximate is not None else None)


def _fill_image(fill, images: torch.Tensor) -> torch.Tensor:
    """The occluder's content as a ``[C, H, W]`` image."""
    shape = images.shape[1:]
    if fill is None:
        fill = 0.0
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    if fill.dim() == 1 and fill.numel() == shape[0]:
        fill = fill.view(-1, 1, 1)
    if fill.dim() not in (0, 3) or (fill.dim() == 3 and fill.shape != shape and fill.shape[1:] != (1, 1)):
        raise InvalidValueError(f"occlusion_maps: fill of shape {tuple(fill.shape)}; valid: a number, [C]={shape[0]} "
                                f"or [C, H, W]={tuple(shape)}")
    return fill.expand(shape).contiguous()


def _occlusion_mask(item_r: torch.Tensor, item_c: torch.Tensor, patch: int, height: int, width: int):
    """``[B, 1, H, W]``: True under each item's square."""
    r = torch.arange(height, device=item_r.device)
    c = torch.arange(width, device=item_c.device)
    in_r = (r >= item_r[:, None]) & (r < item_r[:, None] + patch)
    in_c = (c >= item_c[:, None]) & (c < item_c[:, None] + patch)
    return (in_r[:, :, None] & in_c[:, None, :]).unsqueeze(1)


def _occluded_forward(model, images, fill_image, feature_layer, item_image, item_r, item_c, patch, feature_map):
    """The plain way: whole occluded copies through the whole network, with the layer's features."""
    mask = _occlusion_mask(item_r, item_c, patch, *images.shape[-2:])
    # Channels-last: the CPU convolutions run a quarter faster on it, for the same sums.
    x = torch.where(mask, fill_image, images[item_image]).contiguous(memory_format=torch.channels_last)
    seen = layer_activations(model, x, [feature_layer], logits=True)
    activity = seen[feature_layer][torch.arange(len(x)), feature_map[item_image]].sum((-2, -1))
    return seen["logits"], activity
