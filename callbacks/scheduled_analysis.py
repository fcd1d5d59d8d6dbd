"""What the analysis callbacks share: the epoch schedule (``ScheduledAnalysis``), the fixed probe set kept in
the checkpoint (``ProbedAnalysis``), the maps to show (``chosen_maps``), argument checks, the eval/no-grad
context, and "log this image / figure / table / scalar to every logger and save it under the run dir", also as
the sink of the figures' recipes (``TrainingSink``, :mod:`zfexp.recipes`).

A new analysis callback subclasses ``ProbedAnalysis`` (or ``ScheduledAnalysis``) and writes ``analyse``;
``callbacks/guided_backprop.py`` is the worked example the README walks through."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from zfexp.analysis.activations import check_feature_layers, eval_mode
from zfexp.analysis.deconv_record import check_projectable
from zfexp.analysis.map_choice import chosen_maps  # noqa: F401  (one of the pieces callbacks reuse)
from zfexp.checks import is_int, positive_int
from zfexp.data.sampling import probe_indices, stack_dataset
from zfexp.errors import InvalidValueError
from zfexp.models.external import default_conv_layers
from zfexp.random_state import preserved_random_state
from zfexp.recipes import Inputs
from zfexp.runs.config_groups import config_key
from zfexp.runs.outputs import figure_to_image, file_key, write_image, write_table

log = logging.getLogger(__name__)


def network_of(pl_module: L.LightningModule) -> nn.Module:
    """The wrapped network (``pl_module.net``) whose layers carry the paper's names, else the module itself."""
    return getattr(pl_module, "net", pl_module)


def check_epochs(key: str, epochs: Sequence[int]) -> list[int]:
    """Epoch numbers count from 1 (epoch 1 = after the first pass over the data), as in the paper."""
    bad = [e for e in epochs if not is_int(e) or e < 1]
    if bad:
        raise InvalidValueError(f"{key}={list(epochs)} has {bad}; epochs are integers >= 1 (1 = after the first)")
    return sorted(set(epochs))


def say_epochs_not_reached(key: str, epochs: Sequence[int], trainer: L.Trainer) -> None:
    """One log line naming the scheduled ``epochs`` beyond ``trainer.max_epochs``: a shorter run
    (``trainer.max_epochs=2`` of a schedule made for 8) draws the epochs it reaches and goes on."""
    max_epochs = trainer.max_epochs
    beyond = [e for e in epochs if max_epochs is not None and 0 < max_epochs < e]
    if beyond and not trainer.fast_dev_run:
        log.warning("%s: epochs %s are beyond trainer.max_epochs=%d and are not drawn", key, beyond, max_epochs)


def check_layers(key: str, model: nn.Module, layers: Sequence[str]) -> None:
    for layer in layers:
        try:
            check_projectable(model, layer)
        except ValueError as err:
            raise InvalidValueError(f"{key}: {err}") from err


def layers_or_defaults(key: str, model: nn.Module, layers: Sequence[str] | None,
                       default: Callable[[nn.Module], list[str]] = default_conv_layers,
                       projected: bool = True) -> list[str]:
    """``layers`` as configured, or for ``None`` the network's own: ``default(model)``, by default the paper's
    conv1..conv5 when it has them, else five of its convs spread over its depth (``layer1.0.conv1`` ... in a
    ResNet). Checked before training: each one projectable to pixels (``projected``) or giving features."""
    chosen = list(layers) if layers is not None else default(model)
    if projected:
        check_layers(key, model, chosen)
    else:
        try:
            check_feature_layers(model, chosen)
        except ValueError as err:
            raise InvalidValueError(f"{key}: {err}") from err
    return chosen


def is_quiet(trainer: L.Trainer) -> bool:
    """Analysis callbacks do nothing during the sanity check and fast_dev_run."""
    return bool(trainer.sanity_checking or trainer.fast_dev_run)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for the duration; the previous mode is restored."""
    with eval_mode(model), torch.no_grad():
        yield model


def eval_dataset(trainer: L.Trainer):
    """The validation set of the trainer's datamodule (its images with the evaluation transform)."""
    dm = trainer.datamodule
    if hasattr(dm, "analysis_dataset"):  # one centre crop per image even with 10-crop evaluation
        return dm.analysis_dataset("val")
    dataset = getattr(dm, "data_val", None) if dm is not None else None
    if dataset is None:
        raise RuntimeError("analysis callbacks need a datamodule with a data_val dataset (call setup first)")
    return dataset


def run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.default_root_dir)


# ``epoch=ONCE``: a figure drawn once per run (the deconv evolution grid), logged under its key as it is.
ONCE: Any = object()


def epoch_keys(key: str, epoch: int | None) -> tuple[str, str, str]:
    """``(W&B key, file name, caption suffix)`` of a figure drawn after ``epoch`` (``None``: at the end of fit).

    W&B gets one key per figure, logged at each epoch's step, so its media panel has a slider over the epochs;
    the end-of-fit figure has its own key, ``<key>/final``. The run dir's file names keep the epoch:
    ``deconv/conv5`` after epoch 3 is ``images/deconv_conv5_epoch003.png``, at the end ``..._final.png``."""
    if epoch is ONCE:
        return key, file_key(key), ""
    return (key if epoch is not None else f"{key}/final", f"{file_key(key)}_{tag(epoch)}",
            f" (epoch {epoch})" if epoch is not None else " (end of fit)")


@rank_zero_only
def log_image(trainer: L.Trainer, key: str, image: torch.Tensor, caption: str | None = None,
              epoch: int | None = ONCE) -> Path:
    """Save ``image [C, H, W]`` in [0, 1] under the run dir's ``images/`` and log it to every logger that takes
    images at the trainer's global step; ``epoch``: the epoch it was drawn after, ``None`` at the end of fit
    (keys, file names and caption: :func:`epoch_keys`)."""
    key, name, when = epoch_keys(key, epoch)
    return write_image(run_dir(trainer), trainer.loggers, key, image, trainer.global_step,
                       (caption or key) + when, file_name=name)


@rank_zero_only
def log_figure(trainer: L.Trainer, key: str, fig, caption: str | None = None, epoch: int | None = ONCE) -> Path:
    """A matplotlib figure, as ``log_image`` does with an image (the figure is closed)."""
    return log_image(trainer, key, figure_to_image(fig), caption, epoch)


@rank_zero_only
def log_table(trainer: L.Trainer, key: str, rows: list[dict], epoch: int | None = ONCE,
              images: dict[str, list[torch.Tensor]] | None = None) -> Path:
    """Rows of numbers as a CSV file under the run dir's ``tables/`` and a table in every logger that takes
    tables (W&B), keyed as ``log_image`` keys images. ``images``: columns of images ``[C, H, W]`` in [0, 1],
    one per row, added to the W&B table as image cells (the CSV holds the numbers only)."""
    key, name, _ = epoch_keys(key, epoch)
    return write_table(run_dir(trainer), trainer.loggers, key, rows, trainer.global_step, file_name=name,
                       images=images)


def log_scalars(trainer: L.Trainer, stats: dict[str, float]) -> None:
    """Scalars to every logger at the trainer's global step. They are also kept in ``trainer.callback_metrics``,
    so the run's ``metrics.json`` (and a sweep's summary) holds their last values."""
    for logger in trainer.loggers:
        logger.log_metrics(stats, step=trainer.global_step)
    trainer.callback_metrics.update({k: torch.tensor(float(v)) for k, v in stats.items()})


class ScheduledAnalysis(Callback):
    """Base of the analysis callbacks: runs ``analyse(trainer, pl_module, epoch)`` on rank zero only, never during
    sanity checks or fast_dev_run, after the train epochs in ``epochs`` (counted from 1, as in the paper) and
    every ``every_n_epochs``, and, when ``run_at_fit_end``, once more at the end of fit with ``epoch=None`` (at
    ``on_train_end``, on the training device).

    A subclass writes ``analyse``; it may override ``due`` for another schedule, and calls
    ``super().setup(...)`` if it overrides ``setup`` (that names the ``epochs`` beyond ``trainer.max_epochs``).

    ``config_key`` names the callback in messages: its key in the config (``callbacks.occlusion_maps``), else its
    class name (``OcclusionMaps.patch=0: ...``). Its ``state_key`` is built from its settings, as
    ``ModelCheckpoint``'s is: two callbacks of one class with other settings keep their states apart. The
    settings of when and how fast it runs (``SCHEDULE``) are left out of it: a resumed run may change them and
    keep the state (the probe images, the snapshots so far)."""

    run_at_fit_end = True
    SCHEDULE = ("epochs", "every_n_epochs", "batch_size")

    def __init__(self, epochs: Sequence[int] = (), every_n_epochs: int | None = None):
        self.config_key = config_key(type(self).__name__)
        positive_int(f"{self.config_key}.every_n_epochs", every_n_epochs, null="only the epochs listed")
        self.epochs = check_epochs(f"{self.config_key}.epochs", epochs)
        self.every_n_epochs = every_n_epochs

    # A layer setting left null is the network's default, named in setup (which Lightning runs before it
    # restores a checkpoint): the key holds the layers themselves, as it did when the configs named them.
    RESOLVED = {"layers": "chosen_layers", "feature_layer": "chosen_layer", "first_layer": "chosen_layer"}

    @property
    def state_key(self) -> str:
        names = inspect.signature(type(self).__init__).parameters
        settings = {name: getattr(self, name) for name in names
                    if name not in ("self", *self.SCHEDULE) and hasattr(self, name)}
        for name, resolved in self.RESOLVED.items():
            if settings.get(name, "") is None and getattr(self, resolved, None):
                settings[name] = getattr(self, resolved)
        return self._generate_state_key(**settings)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            say_epochs_not_reached(f"{self.config_key}.epochs", self.epochs, trainer)

    def key(self, key: str, own_entry: str) -> str:
        """``key`` (``occlusion/panel``) of a figure or table, as logged: a callback configured under another entry
        than ``own_entry`` (the one its config file gives it, ``occlusion_maps``) logs under that entry's name
        (``callbacks.occlusion_conv4`` -> ``occlusion_conv4/panel``), so that two callbacks of one class never
        write over each other's figures."""
        group, _, entry = self.config_key.rpartition(".")
        return key if group != "callbacks" or entry == own_entry else f"{entry}/{key.rpartition('/')[2]}"

    def due(self, epoch: int, trainer: L.Trainer) -> bool:
        return epoch in self.epochs or bool(self.every_n_epochs) and epoch % self.every_n_epochs == 0

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        raise NotImplementedError

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = self.run_at_fit_end and epoch == trainer.max_epochs  # the end-of-fit run covers it
        if self.due(epoch, trainer) and not last:
            self._run(trainer, pl_module, epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The end-of-fit analysis, where the training ran: at ``on_fit_end`` Lightning has already torn the
        strategy down and moved the module to the CPU. Under DDP the other ranks wait for rank zero's analysis
        at the barrier that follows (within the process group's timeout, 30 minutes by default)."""
        if self.run_at_fit_end:
            self._run(trainer, pl_module, None)
            trainer.strategy.barrier(f"{self.config_key}: end of fit")

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None) -> None:
        if is_quiet(trainer) or not trainer.is_global_zero:
            return
        # Whatever the analysis draws (a DataLoader's seed, a random choice), training's random numbers stay as
        # they were: the run's numbers do not depend on which analyses ran, and DDP ranks stay in step.
        with preserved_random_state():
            self.analyse(trainer, pl_module, epoch)


class ProbedAnalysis(ScheduledAnalysis):
    """A scheduled analysis of a fixed probe set: ``probe_size`` validation images chosen once (seeded) and
    kept in the checkpoint, so a resumed run analyses the same images. Scheduled as ``ScheduledAnalysis``."""

    def __init__(self, epochs: Sequence[int] = (), probe_size: int = 4, seed: int = 0,
                 every_n_epochs: int | None = None):
        super().__init__(epochs, every_n_epochs)
        positive_int(f"{self.config_key}.probe_size", probe_size)
        self.probe_size, self.seed = probe_size, seed
        self.probe: torch.Tensor | None = None  # dataset indices

    def probe_batch(self, trainer: L.Trainer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [N, C, H, W], labels [N])`` of the probe set, on ``device``; chosen on first use."""
        dataset = eval_dataset(trainer)
        if self.probe is None:
            self.probe = probe_indices(len(dataset), self.probe_size, self.seed)
        images, labels = stack_dataset(dataset, self.probe)
        return images.to(device), labels.to(device)

    def state_dict(self) -> dict:
        return {"probe": self.probe}

    def load_state_dict(self, state: dict) -> None:
        self.probe = state.get("probe")


def tag(epoch: int | None) -> str:
    """``epoch003`` for a scheduled run, ``final`` for the end of fit: the suffix of image keys."""
    return "final" if epoch is None else f"epoch{epoch:03d}"


def inputs_of(trainer: L.Trainer) -> Inputs:
    """The trainer's datamodule's inputs as the recipes see them (shown, grey, class names)."""
    return Inputs.of_datamodule(trainer.datamodule)


class TrainingSink:
    """The recipes' sink in training: each image, figure and table saved under the run dir and logged to every
    logger at the trainer's step, keyed for ``epoch`` (:func:`epoch_keys`; ``None``: the end of fit);
    ``rename`` gives a recipe's key (``occlusion/panel``) the callback's own (:meth:`ScheduledAnalysis.key`)."""

    def __init__(self, trainer: L.Trainer, epoch: int | None, rename: Callable[[str], str] = str):
        self.trainer, self.epoch, self.rename = trainer, epoch, rename

    def image(self, key: str, image: torch.Tensor, caption: str) -> None:
        log_image(self.trainer, self.rename(key), image, caption, self.epoch)

    def figure(self, key: str, fig, caption: str) -> None:
        log_figure(self.trainer, self.rename(key), fig, caption, self.epoch)

    def table(self, key: str, rows: list[dict], images: dict[str, list[torch.Tensor]] | None = None) -> None:
        log_table(self.trainer, self.rename(key), rows, self.epoch, images)

    def scalars(self, stats: dict[str, float]) -> None:
        log_scalars(self.trainer, stats)
