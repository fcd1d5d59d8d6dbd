"""Where a recipe's results go."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Sink(Protocol):
    """Takes what a recipe makes, by key (``occlusion/panel``, ``top9/conv5``): images ``[3, H, W]`` in [0, 1],
    matplotlib figures (closed once written), tables (rows of plain values, with optional columns of images
    ``[3, H, W]``) and scalars."""

    def image(self, key: str, image: torch.Tensor, caption: str) -> None: ...

    def figure(self, key: str, fig: Any, caption: str) -> None: ...

    def table(self, key: str, rows: list[dict], images: dict[str, list[torch.Tensor]] | None = None) -> None: ...

    def scalars(self, stats: dict[str, float]) -> None: ...
