"""Occlusion sensitivity (Fig. 7): slide a grey square over the image and watch the classifier and a layer-5
feature map.

Every occluded copy goes through the network in batches; for networks that are a plain ``nn.Sequential`` of
leaf modules (ZFNet) ``occlusion_incremental`` computes each layer only where the square changes it, with
exactly the same results. Which of the two runs is chosen by the device (:func:`incremental_pays`), and so are
the size of a batch of copies (:func:`copies_per_batch`) and their memory layout (:func:`input_layout`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zfexp.analysis.activations import layer_activations, map_totals
from zfexp.analysis.deconv import DeconvNet
from zfexp.analysis.deconv_record import check_projectable
from zfexp.analysis.geometry import forward_prefix
from zfexp.analysis.network import eval_mode
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

    def table(self) -> list[dict]:
        """One row per image and occluder position: what a CSV file or a W&B table holds."""
        out = []
        for i in range(self.prob_true.shape[0]):
            for r, top in enumerate(self.rows.tolist()):
                for c, left in enumerate(self.cols.tolist()):
                    out.append({"image": i, "top": top, "left": left, "patch": self.patch,
                                "prob_true": float(self.prob_true[i, r, c]), "top_label": int(self.top_label[i, r, c]),
                                "feature_map": int(self.feature_map[i]),
                                "feature_activity": float(self.feature_activity[i, r, c])})
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


def input_layout(model: nn.Module, device: torch.device) -> torch.memory_format:
    """The memory layout to give the occluded copies: channels-last on a CPU (its convolutions run a quarter faster
    on it, for the same sums); on a GPU the layout of the network's first conv weights (the training run's
    channels-last on a GPU), so that no convolution converts one of the two."""
    if device.type == "cpu":
        return torch.channels_last
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and conv.weight.is_contiguous(memory_format=torch.channels_last) \
            and not conv.weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


# Copies per batch on a GPU: at most this share of the free memory, and within these bounds; on a CPU at most
# CPU_BATCH, within CPU_MEMORY.
GPU_MEMORY_SHARE, GPU_BATCH_BOUNDS, CPU_BATCH, CPU_MEMORY = 0.25, (64, 2048), 64, 2**30


@torch.no_grad()
def copies_per_batch(model: nn.Module, images: torch.Tensor) -> int:
    """How many occluded copies to send through ``model`` at once, from one copy's need (three times the largest
    output of a leaf module, from a forward of one image: under ``no_grad`` a layer's input and output are alive
    together): on a GPU as many as fit in a quarter of its free memory, within ``GPU_BATCH_BOUNDS``; on a CPU,
    whose throughput hardly grows with the batch, ``CPU_BATCH`` or as many as fit in ``CPU_MEMORY`` (1 GiB),
    whichever is fewer."""
    largest = [0]

    def note(module, args, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(note) for m in model.modules() if not list(m.children())]
    try:
        model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    per_copy = max(1, 3 * largest[0] + images[0].numel() * images.element_size())
    if images.device.type != "cuda":
        return int(min(CPU_BATCH, max(1, CPU_MEMORY // per_copy)))
    device = images.device
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    low, high = GPU_BATCH_BOUNDS
    return int(min(high, max(low, GPU_MEMORY_SHARE * free // per_copy)))


@torch.no_grad()
def occlusion_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | list[int], patch: int,
                   stride: int, fill: float | torch.Tensor | None = None, feature_layer: str = "conv5",
                   batch_size: int | None = None, incremental: bool | None = None,
                   probabilities: Callable[[torch.Tensor], torch.Tensor] | None = None) -> OcclusionResult:
    """Occlusion sensitivity of ``images [N, C, H, W]`` with true ``labels [N]``.

    Args:
        patch, stride: side of the square and its step, in pixels.
        fill: what the square is filled with: a number, a per-channel ``[C]`` or a full ``[C, H, W]`` tensor;
            ``None`` is 0, the dataset mean for mean-subtracted inputs (the paper's grey square).
        feature_layer: conv layer whose strongest map on the unoccluded image is followed (post-ReLU).
        batch_size: occluded copies per forward batch; ``None``: by the device's memory (:func:`copies_per_batch`).
            The same results with any.
        incremental: compute only the square's footprint at each layer; ``None``: where it is the faster way
            (:func:`incremental_pays`) and the network is a plain ``nn.Sequential`` (same results either way).
        probabilities: logits -> class probabilities (default softmax).
    """
    n, c, height, width = images.shape
    labels = torch.as_tensor(labels, dtype=torch.long, device=images.device).flatten()
    if labels.numel() != n:
        raise InvalidValueError(f"occlusion_maps: {n} images but {labels.numel()} labels")
    for name, value in (("patch", patch), ("stride", stride)):
        positive_int(f"occlusion_maps: {name}", value)
    positive_int("occlusion_maps: batch_size", batch_size, null="by the device's memory")
    if patch > min(height, width):
        raise InvalidValueError(f"occlusion_maps: patch={patch} is larger than the {height}x{width} image; valid: "
                                f"1..{min(height, width)}")
    check_projectable(model, feature_layer)  # names a bad layer with the valid ones
    probabilities = probabilities or (lambda logits: logits.softmax(-1))
    fill_image = _fill_image(fill, images)
    rows, cols = occluder_positions(height, patch, stride), occluder_positions(width, patch, stride)
    leaves = sequential_leaves(model)
    if incremental is None:
        incremental = leaves is not None and incremental_pays(images.device)
    if incremental and leaves is None:
        raise InvalidValueError("occlusion_maps: incremental=True needs a model that is a plain nn.Sequential of its "
                                f"leaf modules with zero-padded convs; {type(model).__name__} is not (use "
                                "incremental=False)")

    with eval_mode(model):
        batch_size = batch_size or (CPU_BATCH if incremental else copies_per_batch(model, images))
        # The incremental run reads the layer's features from the module that gives them (its ReLU).
        feature_module = forward_prefix(model, feature_layer)[-1][1] if incremental else None
        return _occlusion_maps(model, images, labels, patch, fill_image, feature_layer, feature_module, rows, cols,
                               batch_size, leaves if incremental else None, probabilities)


def _occlusion_maps(model, images, labels, patch, fill_image, feature_layer, feature_module, rows, cols, batch_size,
                    leaves, probabilities) -> OcclusionResult:
    """``occlusion_maps`` once its arguments are checked, with the model in eval mode; ``leaves``: the modules
    to run incrementally, or None."""
    n, device = images.shape[0], images.device
    seen = layer_activations(model, images, [feature_layer], logits=True)
    feats = seen[feature_layer]  # [N, C_l, H_l, W_l]
    feature_map = feats.flatten(2).amax(2).argmax(1)  # [N]
    base_activity = feats[torch.arange(n), feature_map].sum((-2, -1))
    base_probs = probabilities(seen["logits"])
    base_prob, base_label = base_probs[torch.arange(n), labels], base_probs.argmax(1)
    projection = DeconvNet(model).project_units(images, feature_layer, feature_map)

    # Every (image, row, column) position, image-major, in batches of batch_size.
    grid = (n, len(rows), len(cols))
    item_image, item_row, item_col = (t.flatten() for t in torch.meshgrid(
        *(torch.arange(size, device=device) for size in grid), indexing="ij"))
    batches = zip(*(t.split(batch_size) for t in (item_image, item_row, item_col)), strict=True)
    rows, cols = rows.to(device), cols.to(device)
    logits, activity = [], []
    if leaves is not None:
        run = IncrementalRun(leaves, images, fill_image, feature_module)
        for image, row, col in batches:
            out, act = run.forward(image, rows[row], cols[col], patch, feature_map)
            logits.append(out)
            activity.append(act)
    else:
        copies = OccludedCopies(images, fill_image, rows, cols, patch, input_layout(model, device))
        with map_totals(model, feature_layer, images) as forward:
            for image, row, col in batches:
                out, act = forward(copies(image, row, col), feature_map[image])
                logits.append(out)
                activity.append(act)
    probs = probabilities(torch.cat(logits))
    return OcclusionResult(
        prob_true=probs.gather(1, labels[item_image, None])[:, 0].view(grid), top_label=probs.argmax(1).view(grid),
        feature_activity=torch.cat(activity).view(grid), feature_map=feature_map, projection=projection,
        base_prob=base_prob, base_label=base_label, base_activity=base_activity, rows=rows.cpu(), cols=cols.cpu(),
        patch=patch)


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


class OccludedCopies:
    """Whole occluded copies of ``images [N, C, H, W]``: ``copies(item_image [B], item_row [B], item_col [B])`` ->
    ``[B, C, H, W]`` in ``layout``, image ``item_image[b]`` with the square at row ``rows[item_row[b]]``, column
    ``cols[item_col[b]]`` filled from ``fill_image [C, H, W]``. The square's masks along each side are made once."""

    def __init__(self, images: torch.Tensor, fill_image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 patch: int, layout: torch.memory_format):
        self.images, self.fill_image, self.layout = images, fill_image, layout
        height, width = images.shape[-2:]
        r, c = torch.arange(height, device=images.device), torch.arange(width, device=images.device)
        self.in_rows = (r >= rows[:, None]) & (r < rows[:, None] + patch)  # [R, H]
        self.in_cols = (c >= cols[:, None]) & (c < cols[:, None] + patch)  # [S, W]

    def __call__(self, item_image: torch.Tensor, item_row: torch.Tensor, item_col: torch.Tensor) -> torch.Tensor:
        mask = (self.in_rows[item_row][:, :, None] & self.in_cols[item_col][:, None, :]).unsqueeze(1)  # [B, 1, H, W]
        return torch.where(mask, self.fill_image, self.images[item_image]).contiguous(memory_format=self.layout)
