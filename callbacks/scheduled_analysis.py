"""The base classes of the analysis callbacks: the epoch schedule (``ScheduledAnalysis``) and the fixed probe
set kept in the checkpoint (``ProbedAnalysis``).

A new analysis callback subclasses ``ProbedAnalysis`` (or ``ScheduledAnalysis``) and writes ``analyse``, with
the layers it analyses from :mod:`callbacks.network_layers` and its outputs logged through
:mod:`callbacks.training_outputs`; ``callbacks/guided_backprop.py`` is the worked example (docs/callbacks.md)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from zfexp.checks import is_int, positive_int
from zfexp.data.sampling import probe_indices, stack_dataset
from zfexp.errors import InvalidValueError
from zfexp.random_state import preserved_random_state
from zfexp.runs.config_groups import config_key

log = logging.getLogger(__name__)


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
    if beyond and not trainer.fast_dev_run:  # type: ignore[attr-defined]  # set outside Trainer's class, unannotated
        log.warning("%s: epochs %s are beyond trainer.max_epochs=%d and are not drawn", key, beyond, max_epochs)


def is_quiet(trainer: L.Trainer) -> bool:
    """Analysis callbacks do nothing during the sanity check and fast_dev_run."""
    return bool(trainer.sanity_checking or trainer.fast_dev_run)  # type: ignore[attr-defined]  # as above


def eval_dataset(trainer: L.Trainer, max_images: int | None = None):
    """The validation set of the trainer's datamodule (its images with the evaluation transform); its first
    ``max_images`` only, when given."""
    dm = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector, unannotated
    if hasattr(dm, "analysis_dataset"):  # one centre crop per image even with 10-crop evaluation
        dataset = dm.analysis_dataset("val")
    else:
        dataset = getattr(dm, "data_val", None) if dm is not None else None
    if dataset is None:
        raise RuntimeError("analysis callbacks need a datamodule with a data_val dataset (call setup first)")
    if max_images is not None and max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(max_images))
    return dataset


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
        return epoch in self.epochs or bool(self.every_n_epochs and epoch % self.every_n_epochs == 0)

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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A probe set restored from a checkpoint must lie in this run's validation set: checked before the
        first step, not when the first figure is drawn."""
        if self.probe is None:
            return
        size, last = len(eval_dataset(trainer)), int(self.probe.max())
        if last >= size:
            raise InvalidValueError(
                f"{self.config_key}: the checkpoint's probe images (validation images up to #{last}) are "
                f"not all in this run's validation set of {size} images: it was written with other data settings "
                "(data.subset_size, data.val_size, data.class_subset). Resume with the overrides of the run that "
                "wrote it (its config.yaml), or start afresh with ckpt_path=null")

    def state_dict(self) -> dict:
        return {"probe": self.probe}

    def load_state_dict(self, state: dict) -> None:
        self.probe = state.get("probe")
