"""Approximate occlusion by adaptive drill-down (opt-in): the occluder at a coarse grid of positions everywhere,
and at every fine position only where the coarse grid shows an effect on the classifier; the other positions
interpolated. :func:`~zfexp.analysis.occlusion.occlusion_maps` runs it with ``approximate=DrillDown(...)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from zfexp.checks import integer, number_in, positive_int
from zfexp.errors import InvalidValueError


@dataclass(frozen=True)
class DrillDown:
    """Approximate occlusion by adaptive drill-down: the square every ``coarse`` fine steps everywhere (always
    the first and last position of a side), then every fine position of a coarse cell whose corners show an
    effect on the classifier: a true-class probability that differs from the unoccluded one by more than
    ``threshold``, or another top class. The other positions are interpolated (bilinearly on the coarse grid;
    the top class from the nearest corner), so there the probability stays within about ``threshold`` of the
    exact one (measured: benchmarks/README.md). The feature activity follows the same positions: where the
    classifier shows no effect it is interpolated too (an activity criterion would drill almost everywhere on
    small images).

    ``coarse=None``: as many fine steps as fit in half the square (a square that moves by half its side
    between samples cannot hide an effect of its whole size between two of them)."""

    coarse: int | None = None
    threshold: float = 0.01
    margin: int = 1  # cells around an effect drilled too: an effect can begin between two coarse samples

    def __post_init__(self) -> None:
        positive_int("approximate.coarse", self.coarse, null="as many fine steps as fit in half the square",
                     unit="fine steps")
        number_in("approximate.threshold", self.threshold, 0, float("inf"))
        integer("approximate.margin", self.margin, low=0, unit="cells")

    def factor(self, patch: int, stride: int) -> int:
        return self.coarse or max(1, (patch // 2) // stride)


def drill_down(approximate: DrillDown | Mapping[str, Any] | bool | None, key: str = "approximate") -> DrillDown | None:
    """What ``approximate`` asks for: a :class:`DrillDown`, its fields as a mapping, ``True`` (its defaults), or
    ``None`` / ``False`` (every position computed). ``key`` names the value in the error."""
    if approximate is None or approximate is False:
        return None
    if approximate is True:
        return DrillDown()
    if isinstance(approximate, DrillDown):
        return approximate
    if isinstance(approximate, Mapping):
        unknown = set(approximate) - {f.name for f in dataclasses.fields(DrillDown)}
        if unknown:
            raise InvalidValueError(f"{key}={dict(approximate)} has {sorted(unknown)}; valid fields: coarse, "
                                    "threshold, margin")
        try:
            return DrillDown(**approximate)
        except InvalidValueError as err:  # its fields' messages start "approximate.<field>=": the full key instead
            raise InvalidValueError(f"{key}.{str(err).removeprefix('approximate.')}") from None
    raise InvalidValueError(f"{key}={approximate!r}; valid: null or false (every position computed), true (the "
                            "approximate mode with its defaults), or {coarse: ..., threshold: ..., margin: ...}")


def coarse_indices(count: int, factor: int) -> list[int]:
    """The fine indices a coarse grid samples along one side: every ``factor``-th, and always the last."""
    return sorted({*range(0, count, factor), count - 1})


def coarse_grid(n_rows: int, n_cols: int, factor: int, device) -> torch.Tensor:
    """``[R, S]`` bool: the coarse grid's positions."""
    mask = torch.zeros(n_rows, n_cols, dtype=torch.bool, device=device)
    mask[torch.tensor(coarse_indices(n_rows, factor))[:, None], torch.tensor(coarse_indices(n_cols, factor))] = True
    return mask


def interpolation_weights(count: int, factor: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per fine index: the coarse samples before and after it (fine indices) and the weight of the one after."""
    coarse = torch.tensor(coarse_indices(count, factor))
    fine = torch.arange(count)
    after = torch.searchsorted(coarse, fine).clamp(max=len(coarse) - 1)  # first sample >= the index
    before = torch.where(coarse[after] == fine, after, (after - 1).clamp(min=0))
    lo, hi = coarse[before], coarse[after]
    weight = torch.where(hi > lo, (fine - lo).float() / (hi - lo).clamp(min=1).float(), torch.zeros(count))
    return lo, hi, weight


def interpolate_coarse(prob_true, top_label, activity, n_rows, n_cols, factor) -> None:
    """Fill every position of ``[N, R, S]`` maps known on the coarse grid: bilinear for the numbers, the nearest
    sample for the top class (in place)."""
    r_lo, r_hi, r_w = (t.to(prob_true.device) for t in interpolation_weights(n_rows, factor))
    c_lo, c_hi, c_w = (t.to(prob_true.device) for t in interpolation_weights(n_cols, factor))
    rw, cw = r_w[:, None], c_w[None, :]
    for values in (prob_true, activity):
        corners = [values[:, r][:, :, c] for r in (r_lo, r_hi) for c in (c_lo, c_hi)]  # [N, R, S] each
        values.copy_((1 - rw) * (1 - cw) * corners[0] + (1 - rw) * cw * corners[1] + rw * (1 - cw) * corners[2]
                     + rw * cw * corners[3])
    nearest_r = torch.where(r_w > 0.5, r_hi, r_lo)
    nearest_c = torch.where(c_w > 0.5, c_hi, c_lo)
    top_label.copy_(top_label[:, nearest_r][:, :, nearest_c])


def cells_with_effect(prob_true, top_label, base_prob, base_label, threshold, factor, margin) -> torch.Tensor:
    """``[N, R, S]`` bool: the fine positions of every coarse cell with an effect at one of its corners, and of
    the cells up to ``margin`` cells away (see :class:`DrillDown`)."""
    n, n_rows, n_cols = prob_true.shape
    effect = ((prob_true - base_prob[:, None, None]).abs() > threshold) | (top_label != base_label[:, None, None])
    rows = torch.tensor(coarse_indices(n_rows, factor), device=effect.device)
    cols = torch.tensor(coarse_indices(n_cols, factor), device=effect.device)
    at = effect[:, rows][:, :, cols]  # [N, Rc, Sc]: at the coarse samples
    cells = at[:, :-1, :-1] | at[:, :-1, 1:] | at[:, 1:, :-1] | at[:, 1:, 1:]  # [N, Rc - 1, Sc - 1]
    if margin:
        cells = F.max_pool2d(cells[:, None].float(), 2 * margin + 1, stride=1, padding=margin)[:, 0] > 0
    # A fine position belongs to every cell whose span (corners included) holds it.
    fine_r = torch.arange(n_rows, device=effect.device)[:, None]
    fine_c = torch.arange(n_cols, device=effect.device)[:, None]
    in_r = ((fine_r >= rows[:-1]) & (fine_r <= rows[1:])).float()  # [R, Rc - 1]
    in_c = ((fine_c >= cols[:-1]) & (fine_c <= cols[1:])).float()  # [S, Sc - 1]
    return torch.einsum("ri,nij,sj->nrs", in_r, cells.float(), in_c) > 0
