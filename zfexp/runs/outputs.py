"""Where analysis results go: a PNG or CSV under a run directory, and the same to every logger that takes it.

Used by the callbacks (the trainer's run dir and loggers, through ``callbacks.training_outputs.TrainingSink``)
and by ``zfexp.analyze`` (its own run dir and W&B run, through :class:`RunSink`), so a figure looks the same
whichever produced it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from zfexp.errors import InvalidValueError


def file_key(key: str) -> str:
    """``"occlusion/panel_final"`` -> ``"occlusion_panel_final"``: a logger key as a file name."""
    return re.sub(r"[^\w.-]+", "_", key)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """``image [C, H, W]`` in [0, 1] as a PNG file at ``path`` (its folder made when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, path)
    return path


def write_image(run_dir: str | Path, loggers: Sequence, key: str, image: torch.Tensor, step: int,
                caption: str | None = None, file_name: str | None = None) -> Path:
    """Save ``image [C, H, W]`` in [0, 1] as ``<run_dir>/images/<file_name>.png`` (default: the key as a file
    name) and log it under ``key`` to every logger that takes images."""
    path = save_png(image, Path(run_dir) / "images" / ((file_name or file_key(key)) + ".png"))
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[image.permute(1, 2, 0).cpu().numpy()], step=step,
                             caption=[caption or key])
    return path


def figure_to_image(fig) -> torch.Tensor:
    """A matplotlib figure rendered to ``[3, H, W]`` in [0, 1]; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    from PIL import Image

    rgb = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def write_figure(run_dir: str | Path, loggers: Sequence, key: str, fig, step: int, caption: str | None = None) -> Path:
    """A matplotlib figure as ``<run_dir>/images/<key>.png`` and as an image in every logger."""
    return write_image(run_dir, loggers, key, figure_to_image(fig), step, caption)


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """``rows`` (dicts with the same keys) as a CSV file with a header line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_table(run_dir: str | Path, loggers: Sequence, key: str, rows: Sequence[dict], step: int,
                file_name: str | None = None, images: Mapping[str, Sequence[torch.Tensor]] | None = None) -> Path:
    """``rows`` (dicts with the same keys) as ``<run_dir>/tables/<file_name>.csv`` (default: the key as a file
    name) and as a table under ``key`` in every logger that takes tables (a W&B table). ``images``: extra
    columns of images ``[C, H, W]`` in [0, 1], one per row, as image cells of the W&B table (a CSV file cannot
    hold them)."""
    if not rows:
        raise InvalidValueError(f"write_table({key!r}): no rows")
    images = dict(images or {})
    for column, cells in images.items():
        if len(cells) != len(rows):
            raise InvalidValueError(f"write_table({key!r}): image column {column!r} has {len(cells)} cells for "
                                    f"{len(rows)} rows")
    columns = list(rows[0])
    path = write_csv(Path(run_dir) / "tables" / ((file_name or file_key(key)) + ".csv"), rows)
    data = [[_plain(row[c]) for c in columns] for row in rows]
    takers = [logger for logger in loggers if hasattr(logger, "log_table")]
    if takers and images:
        import wandb  # the loggers that take tables are W&B's; their image cells are wandb.Image

        for i, row in enumerate(data):
            row.extend(wandb.Image(cells[i].permute(1, 2, 0).cpu().numpy()) for cells in images.values())
    for logger in takers:
        logger.log_table(key=key, columns=columns + list(images), data=data, step=step)
    return path


class RunSink:
    """The recipes' sink (:class:`zfexp.recipes.Sink`) of a run that is not training (``zfexp.analyze``): each
    image, figure and table saved under ``run_dir`` and logged to every one of ``loggers`` at ``step``, keyed as
    the recipe keys it; ``written`` lists the files, in the order they were written."""

    def __init__(self, run_dir: str | Path, loggers: Sequence, step: int = 0):
        self.run_dir, self.loggers, self.step = Path(run_dir), list(loggers), step
        self.written: list[str] = []

    def image(self, key: str, image: torch.Tensor, caption: str) -> None:
        self.written.append(str(write_image(self.run_dir, self.loggers, key, image, self.step, caption)))

    def figure(self, key: str, fig, caption: str) -> None:
        self.written.append(str(write_figure(self.run_dir, self.loggers, key, fig, self.step, caption)))

    def table(self, key: str, rows: list[dict], images: dict[str, list[torch.Tensor]] | None = None) -> None:
        self.written.append(str(write_table(self.run_dir, self.loggers, key, rows, self.step, images=images)))

    def scalars(self, stats: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log_metrics(stats, step=self.step)


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item()
    return value
