"""Matplotlib figures of the analysis results: the Fig. 7 occlusion panel and the Fig. 5 invariance curves.

Each builder takes results (and the images they came from) and returns a ``Figure``; writing it somewhere is
``zfexp.runs.outputs``' job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, or wanted, on a training node

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from zfexp.analysis.invariance import InvarianceResult  # noqa: E402
from zfexp.analysis.occlusion import OcclusionResult  # noqa: E402
from zfexp.data.classes import class_name  # noqa: E402
from zfexp.figures.grid import normalise_tiles  # noqa: E402


def _show(image: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` -> an ``[H, W, C]`` (or ``[H, W]``) array in [0, 1], contrast stretched."""
    lo, hi = image.min(), image.max()
    img = ((image - lo) / (hi - lo).clamp_min(1e-12)).cpu()
    return img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)


def occlusion_figure(result: OcclusionResult, images: torch.Tensor, labels: Sequence[int],
                     class_names: Sequence[str] | None = None, feature_layer: str = "conv5", truth: str = "true"):
    """Fig. 7, one row per image: (a) the image, (b) total activity of the followed feature map, (c) that
    map's deconv projection, (d) probability of the true class and (e) most probable class, as functions of
    the occluder's position (each cell: the square's centre). ``truth`` names where ``labels`` come from
    (``"predicted"`` for unlabelled photographs)."""
    n = images.shape[0]
    fig, axes = plt.subplots(n, 5, figsize=(15, 3.1 * n), squeeze=False, dpi=80)
    p = result.patch
    height, width = images.shape[-2:]
    # Cells sit at the squares' centres (the last square is clipped by the border, as it is occluded).
    extent = (float(result.cols[0]) + p / 2, min(float(result.cols[-1]) + p / 2, width),
              min(float(result.rows[-1]) + p / 2, height), float(result.rows[0]) + p / 2)
    cmap = plt.get_cmap("tab20")
    for i in range(n):
        true = int(labels[i])
        ax = axes[i]
        ax[0].imshow(_show(images[i]), cmap="gray")
        ax[0].set_title(f"(a) {truth}: {class_name(true, class_names)}\np={float(result.base_prob[i]):.2f}", fontsize=9)
        im = ax[1].imshow(result.feature_activity[i].cpu(), cmap="viridis", extent=extent)
        ax[1].set_title(f"(b) {feature_layer} map {int(result.feature_map[i])}: total activity", fontsize=9)
        fig.colorbar(im, ax=ax[1], fraction=0.046)
        proj = normalise_tiles(result.projection[i][None].cpu(), "symmetric")[0]
        ax[2].imshow(proj[0] if proj.shape[0] == 1 else proj.permute(1, 2, 0), cmap="gray")
        ax[2].set_title("(c) its projection (deconvnet)", fontsize=9)
        im = ax[3].imshow(result.prob_true[i].cpu(), cmap="jet", vmin=0, vmax=1, extent=extent)
        ax[3].set_title(f"(d) p({class_name(true, class_names)})", fontsize=9)
        fig.colorbar(im, ax=ax[3], fraction=0.046)
        top = result.top_label[i].cpu()
        shown = sorted(set(top.flatten().tolist()))
        ax[4].imshow(top % 20, cmap=cmap, vmin=0, vmax=19, extent=extent, interpolation="nearest")
        ax[4].set_title("(e) most probable class", fontsize=9)
        ax[4].legend(handles=[Patch(color=cmap(c % 20), label=class_name(c, class_names)) for c in shown[:8]],
                     fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    return fig


def invariance_figure(curves: Mapping[str, InvarianceResult], labels: Sequence[int],
                      class_names: Sequence[str] | None = None):
    """Fig. 5: one row per transform; columns: feature distance at each layer, then P(true class); one line
    per image."""
    transforms = list(curves)
    layers = list(next(iter(curves.values())).distance)
    fig, axes = plt.subplots(len(transforms), len(layers) + 1, figsize=(4.2 * (len(layers) + 1),
                                                                        3.2 * len(transforms)),
                             squeeze=False, dpi=80)
    for r, transform in enumerate(transforms):
        c = curves[transform]
        x = c.values.tolist()
        for j, layer in enumerate(layers + ["prob"]):
            ax = axes[r, j]
            series = c.prob_true if layer == "prob" else c.distance[layer]
            for i in range(series.shape[0]):
                ax.plot(x, series[i].tolist(), marker=".", label=class_name(int(labels[i]), class_names))
            ax.set_xlabel(c.unit, fontsize=9)
            ax.set_title(f"{transform}: " + ("P(true class)" if layer == "prob" else f"{layer} distance"), fontsize=10)
            if layer == "prob":
                ax.set_ylim(-0.02, 1.02)
        axes[r, -1].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
