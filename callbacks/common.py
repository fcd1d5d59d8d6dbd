"""What the analysis callbacks share: the epoch schedule, layer checks, the fixed probe batch, the
eval/no-grad context, and "log this image to every logger and save it under the run dir"."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from zfexp.analysis import forward_prefix
from zfexp.render import save_png


def network_of(pl_module: L.LightningModule) -> nn.Module:
    """The wrapped network (``pl_module.net``) whose layers carry the paper's names, else the module itself."""
    return getattr(pl_module, "net", pl_module)


def check_epochs(owner: str, epochs: Sequence[int]) -> list[int]:
    """Epoch numbers count from 1 (epoch 1 = after the first pass over the data), as in the paper."""
    bad = [e for e in epochs if isinstance(e, bool) or not isinstance(e, int) or e < 1]
    if bad:
        raise ValueError(f"{owner}: epochs={list(epochs)} has {bad}; epochs are integers >= 1 (1 = after the first)")
    return sorted(set(epochs))


def check_epochs_fit(owner: str, epochs: Sequence[int], trainer: L.Trainer) -> None:
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0 and any(e > max_epochs for e in epochs):
        raise ValueError(f"{owner}: epochs {[e for e in epochs if e > max_epochs]} are beyond "
                         f"trainer.max_epochs={max_epochs}; valid: 1..{max_epochs}")


def check_layers(owner: str, model: nn.Module, layers: Sequence[str]) -> None:
    for layer in layers:
        try:
            forward_prefix(model, layer)
        except ValueError as err:
            raise ValueError(f"{owner}: {err}") from err


def is_quiet(trainer: L.Trainer) -> bool:
    """Analysis callbacks do nothing during the sanity check and fast_dev_run."""
    return bool(trainer.sanity_checking or trainer.fast_dev_run)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for the duration; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def probe_indices(n_available: int, size: int, seed: int) -> torch.Tensor:
    """A fixed, seeded choice of ``size`` dataset indices (sorted)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_available, generator=g)[: min(size, n_available)].sort().values


def stack_dataset(dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, C, H, W], labels [N])`` of ``dataset`` at ``indices``."""
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def eval_dataset(trainer: L.Trainer):
    """The validation set of the trainer's datamodule (its images with the evaluation transform)."""
    dm = trainer.datamodule
    dataset = getattr(dm, "data_val", None) if dm is not None else None
    if dataset is None:
        raise RuntimeError("analysis callbacks need a datamodule with a data_val dataset (call setup first)")
    return dataset


def run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.default_root_dir)


@rank_zero_only
def log_image(trainer: L.Trainer, key: str, image: torch.Tensor, caption: str | None = None) -> Path:
    """Save ``image [C, H, W]`` in [0, 1] as ``<run dir>/images/<key>.png`` and log it to every logger that
    takes images (step = the trainer's global step; the caption says which epoch)."""
    path = save_png(image, run_dir(trainer) / "images" / (re.sub(r"[^\w.-]+", "_", key) + ".png"))
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[image.permute(1, 2, 0).cpu().numpy()], step=trainer.global_step,
                             caption=[caption or key])
    return path


class ScheduledAnalysis(Callback):
    """Base of the analysis callbacks: runs ``analyse(trainer, pl_module, epoch)`` on rank zero, never during
    sanity checks or fast_dev_run, after each train epoch for which ``due(epoch, trainer)`` holds (epochs count
    from 1) and, when ``run_at_fit_end``, once more at the end of fit with ``epoch=None``."""

    run_at_fit_end = True

    def due(self, epoch: int, trainer: L.Trainer) -> bool:
        return False

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        raise NotImplementedError

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = self.run_at_fit_end and epoch == trainer.max_epochs  # the end-of-fit run covers it
        if self.due(epoch, trainer) and not last:
            self._run(trainer, pl_module, epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_at_fit_end:
            self._run(trainer, pl_module, None)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        if is_quiet(trainer) or not trainer.is_global_zero:
            return
        self.analyse(trainer, pl_module, epoch)


def tag(epoch: int | None) -> str:
    """``epoch003`` for a scheduled run, ``final`` for the end of fit: the suffix of image keys."""
    return "final" if epoch is None else f"epoch{epoch:03d}"
