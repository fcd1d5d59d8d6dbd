"""Fixed, seeded choices of dataset items: the probe images the analyses look at."""

from __future__ import annotations

import torch


def probe_indices(n_available: int, size: int, seed: int) -> torch.Tensor:
    """A fixed, seeded choice of ``size`` dataset indices (sorted)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_available, generator=g)[: min(size, n_available)].sort().values


def stack_dataset(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, C, H, W], labels [N])`` of ``dataset`` at ``indices``."""
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])
