"""Local contrast normalisation across channels (Krizhevsky et al. 2012, Sec. 3.3; ZFNet's layers 1 and 2) in a
few kernels.

For the activity ``a_c`` of map ``c`` at one position, with the window ``N(c)`` of ``size`` neighbouring maps::

    b_c = a_c / (k + alpha * sum_{c' in N(c)} a_c'^2) ** beta        convention "paper" (as the papers write it)
    b_c = a_c / (k + alpha / size * sum_{c' in N(c)} a_c'^2) ** beta  convention "torch" (nn.LocalResponseNorm, Caffe)

``nn.LocalResponseNorm`` sums the window with a padded 3-d average pool over a 5-d view (seven kernels, and slow
ones in channels-last). Here the window sums are one matrix product of the squared activity with a fixed band
matrix over channels (one GEMM in either memory layout), fused with ``k +``; then a power and a product.
"""

from __future__ import annotations

import torch
from torch import nn

from zfexp.checks import one_of, positive_int

CONVENTIONS = ("paper", "torch")


def window_band(channels: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[C, C]`` band: ``band[i, c] = 1`` when map ``i`` is in map ``c``'s window, the maps
    ``c - size // 2 .. c + (size - 1) // 2`` (``nn.LocalResponseNorm``'s window)."""
    i = torch.arange(channels, device=device)
    offset = i[:, None] - i[None, :]  # i - c
    return ((offset >= -(size // 2)) & (offset <= (size - 1) // 2)).to(dtype)


class LocalContrastNorm(nn.Module):
    """``[N, C, H, W]`` -> ``[N, C, H, W]``: each activity divided by ``(k + alpha * window sum of squares)^beta``.

    Args:
        size: maps in the window (5 in AlexNet and ZFNet).
        alpha, beta, k: the formula's constants (1e-4, 0.75, 2 in Krizhevsky et al.).
        convention: ``"paper"``: ``alpha`` multiplies the window's sum of squares, as Krizhevsky et al. write it;
            ``"torch"``: ``alpha / size`` does, as in ``nn.LocalResponseNorm`` and Caffe (5x weaker at size 5).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 convention: str = "paper"):
        super().__init__()
        one_of("lrn.convention", convention, CONVENTIONS,
               "paper: alpha times the window's sum of squares, as Krizhevsky et al. 2012 write it; torch: alpha / "
               "size times it, as nn.LocalResponseNorm and Caffe")
        positive_int("lrn.size", size, unit="maps")
        self.size, self.convention = size, convention
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)
        self.alpha_per_sum = self.alpha if convention == "paper" else self.alpha / size
        self._constants: dict[tuple[int, torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _band_and_k(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The window band and ``k`` as a tensor, made once per shape, dtype and device: not buffers (nothing of
        them in state_dict), and not made in each forward (a tensor made from a Python number on a GPU is a
        copy the host waits for)."""
        key = (x.shape[1], x.dtype, x.device)
        if key not in self._constants:
            self._constants[key] = (window_band(x.shape[1], self.size, x.dtype, x.device),
                                    torch.tensor(self.k, dtype=x.dtype, device=x.device))
        return self._constants[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        band, k = self._band_and_k(x)
        n, c, h, w = x.shape
        if x.is_contiguous(memory_format=torch.channels_last):
            squares = x.square().permute(0, 2, 3, 1).reshape(-1, c)  # [N*H*W, C], a view in channels-last
            denominator = torch.addmm(k, squares, band, alpha=self.alpha_per_sum)  # k + alpha * window sums
            denominator = denominator.view(n, h, w, c).permute(0, 3, 1, 2)
        else:
            squares = x.square().reshape(n, c, h * w)
            denominator = torch.baddbmm(k, band.T.expand(n, c, c), squares, alpha=self.alpha_per_sum)
            denominator = denominator.view(n, c, h, w)
        return x * denominator.pow(-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha:g}, beta={self.beta:g}, k={self.k:g}, convention={self.convention}"
