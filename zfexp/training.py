"""The training task behind ``train.py``: instantiate from the composed config, fit, test, write metrics.json.

Kept apart from ``train.py`` so tests (and notebooks) call it with a config composed by Hydra's compose API.
"""

from __future__ import annotations

import logging
import os
import secrets
import typing
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from zfexp.checkpoints import RESUMABLE, check_checkpoint_file, check_resumes, newest_resumable, read_checkpoint
from zfexp.errors import CheckpointError, InvalidValueError
from zfexp.models.classifiers import classifier_name
from zfexp.module import ImageClassifier
from zfexp.pretrained import check_compatible, load_all_but_classifier_, load_pretrained
from zfexp.runs.config_groups import instantiate_group
from zfexp.runs.launchers import launch_digest, shared_launch_id
from zfexp.runs.lifecycle import Run, task_wrapper
from zfexp.runs.loggers import WANDB_RUN_KEY
from zfexp.safe_load import trust_option

log = logging.getLogger(__name__)

METRIC_KEYS = ("train/top1_err", "train/top5_err", "train/loss", "val/top1_err", "val/top5_err", "val/loss",
               "test/top1_err", "test/top5_err", "test/mean_class_acc", "test/loss")


# Kept from the end of fit: the last epoch's train errors, and analysis scalars such as FilterDiagnostics'
# filters/dead_frac/<layer> (val/ and test/ come from evaluating the best checkpoint afterwards).
FIT_METRIC_PREFIXES = ("train/", "filters/")


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str, task_name: str, current_run: Path) -> str | None:
    """``"last"`` -> the newest complete ``last.ckpt`` or ``last_step.ckpt`` among this task's earlier runs; a
    path must be a complete checkpoint file."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        runs = Path(log_dir) / task_name / "runs"
        newest = newest_resumable(runs, exclude=current_run)
        if newest is None:
            raise CheckpointError(f"ckpt_path=last: no earlier run of task {task_name!r} has a complete checkpoint to "
                                  f"resume from (looked for {runs}/*/checkpoints/{{{','.join(RESUMABLE)}}}); give a "
                                  "checkpoint path instead, or null to start afresh")
        log.info("ckpt_path=last: resuming %s", newest)
        return str(newest)
    return str(check_checkpoint_file(ckpt_path, "ckpt_path"))


SEED_RANGE = (0, 2**32 - 1)  # what numpy's generator accepts, and so seed_everything


def check_seed(seed: Any) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or
                             not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise InvalidValueError(f"seed={seed!r}: must be an integer in {SEED_RANGE[0]}..{SEED_RANGE[1]}, or null (a "
                                "seed is drawn and recorded in metrics.json)")


def run_seed(seed: int | None) -> int:
    """The seed this process runs with: the configured one; for ``seed=null`` one drawn from the OS. Every
    process of one DDP run must draw the same: the extra processes Lightning's DDP launches (``LOCAL_RANK`` > 0)
    take rank zero's from ``PL_GLOBAL_SEED``; processes started together by an external launcher take one
    derived from the launch they share (:func:`~zfexp.runs.launchers.shared_launch_id`)."""
    if seed is not None:
        return int(seed)
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get("PL_GLOBAL_SEED"):
        return int(os.environ["PL_GLOBAL_SEED"])
    launch = shared_launch_id()
    if launch is not None:
        return launch_digest(launch) % (SEED_RANGE[1] + 1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InvalidValueError("seed=null: this process is one of several started together (WORLD_SIZE > 1) by a "
                                "launcher that names no run (torchrun without --rdzv-id or --standalone, or "
                                "another), so the processes cannot draw one seed; give seed=<an integer>")
    return secrets.randbelow(SEED_RANGE[1] + 1)


PRECISIONS = (*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS), 64, 32, 16)


def check_trainer(cfg: DictConfig) -> None:
    """The epoch and step counts of ``trainer`` (a run that would train nothing is an error, not a result) and
    its precision, checked before Lightning is given them."""
    t = cfg.trainer
    precision = t.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise InvalidValueError(f"trainer.precision={precision!r}; valid: {', '.join(map(str, PRECISIONS))} (or "
                                "${zfexp.bf16_where_native:}: bf16-mixed where the device computes it natively)")
    max_epochs, max_steps, min_epochs = t.get("max_epochs"), t.get("max_steps", -1), t.get("min_epochs")
    for key, value in (("max_epochs", max_epochs), ("max_steps", max_steps), ("min_epochs", min_epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidValueError(f"trainer.{key}={value!r}: must be an integer")
    if max_steps is not None and max_steps != -1 and max_steps < 1:
        raise InvalidValueError(f"trainer.max_steps={max_steps}: must be a positive number of steps, or -1 (no limit: "
                                "trainer.max_epochs decides)")
    unlimited_steps = max_steps is None or max_steps == -1
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise InvalidValueError(f"trainer.max_epochs={max_epochs}: must be at least 1 (the number of training epochs; "
                                "paper: 70)")
    if max_epochs == -1 and unlimited_steps:
        raise InvalidValueError("trainer.max_epochs=-1 (no limit) needs trainer.max_steps: a run would never end")
    if min_epochs is not None and max_epochs not in (None, -1) and not 0 <= min_epochs <= max_epochs:
        raise InvalidValueError(f"trainer.min_epochs={min_epochs}: must be in 0..trainer.max_epochs={max_epochs}")


def check_ablation_row(cfg: DictConfig) -> None:
    """A sweep of ``sweeps/`` picks its row with ``ablation.row``: name the valid rows when it is not one."""
    ablation = cfg.get("ablation") or {}
    rows, row = ablation.get("rows"), ablation.get("row")
    if rows is not None and row not in rows:
        raise InvalidValueError(f"ablation.row={row!r} is not a row of sweep {cfg.get('sweep_name')!r}; valid: "
                                f"{', '.join(rows)}")


def name_wandb_run(cfg: DictConfig, run_dir: Path) -> None:
    """In a multirun, every job is its own W&B run named by its overrides (or ``run_name``), and all jobs of
    one launch share the group ``<sweep_name>-<launch time>`` (the sweep dir's name, the same for every job
    whichever process or machine runs it). Values the user set are kept."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return
    multirun, overrides = False, ""
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        overrides = hc.job.override_dirname
    with open_dict(wandb_cfg):
        if wandb_cfg.get("name") is None and (cfg.get("run_name") or (multirun and overrides)):
            wandb_cfg.name = str(cfg.get("run_name") or overrides)
        if wandb_cfg.get("group") is None and multirun:
            wandb_cfg.group = f"{cfg.get('sweep_name') or 'multirun'}-{run_dir.parent.name}"


def continue_wandb_run(cfg: DictConfig, resumed: dict[str, Any] | None) -> None:
    """A run resumed from a checkpoint (its contents: ``resumed``) logs to the W&B run the checkpoint was written
    under (``resume="allow"``; offline too: ``wandb sync`` then puts both parts in one run). An ``id`` the user
    set is kept."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    run_id = (resumed or {}).get(WANDB_RUN_KEY)
    if wandb_cfg is None or run_id is None or wandb_cfg.get("id"):
        return
    with open_dict(wandb_cfg):
        wandb_cfg.id, wandb_cfg.resume = run_id, "allow"
    log.info("resuming W&B run %s", run_id)


def without_logger_only_callbacks(callbacks: list[Callback], loggers: list) -> list[Callback]:
    """``callbacks`` less those that only write to a logger (``LearningRateMonitor``) when there is none
    (``logger=none``): Lightning would stop the run for them."""
    if loggers:
        return callbacks
    dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
    if dropped:
        log.info("no logger (logger=none): leaving out %s, which only write to one",
                 ", ".join(type(c).__name__ for c in dropped))
    return [c for c in callbacks if c not in dropped]


def build_module(cfg: DictConfig, datamodule, trusted: bool = False) -> ImageClassifier:
    """The network of the ``model`` group; or, with ``pretrained_ckpt``, the checkpoint's network with a new
    fc8 for this data's classes, its other weights loaded and layers up to ``freeze`` fixed (``from_scratch``:
    the same network randomly initialised, every layer trained)."""
    options = OmegaConf.to_container(cfg.module, resolve=True)
    dims = {"num_classes": datamodule.num_classes, "in_channels": datamodule.num_channels,
            "input_size": datamodule.input_size}
    from_scratch, freeze = bool(cfg.get("from_scratch", False)), cfg.get("freeze")
    if not cfg.get("pretrained_ckpt"):
        if freeze is not None and not from_scratch:
            raise InvalidValueError(f"freeze={freeze}: fixing layers needs pretrained_ckpt=<a train.py checkpoint>; or "
                                    "set freeze=null")
        return ImageClassifier(net=cfg.model, **dims, **options)
    pretrained = load_pretrained(cfg.pretrained_ckpt, trusted=trusted)
    check_compatible(pretrained, datamodule.num_channels, datamodule.input_size)
    # The checkpoint holds the weights: a builder's own (model.weights=DEFAULT) are neither read nor kept.
    net = {**pretrained.net, "weights": None} if "weights" in pretrained.net else pretrained.net
    module = ImageClassifier(net=net, **dims, **options, freeze=None if from_scratch else freeze)
    if from_scratch:
        log.info("from scratch: the network of %s, randomly initialised, all layers trained", pretrained.path)
        return module
    copied = load_all_but_classifier_(module.net, pretrained)
    if pretrained.mean_image is not None and datamodule.preprocess.mean_image:
        datamodule.mean = pretrained.mean_image  # inputs normalised as in pretraining
    log.info("transfer: %d tensors from %s, new %s for %d classes, fixed: %s", len(copied), pretrained.path,
             classifier_name(module.net), datamodule.num_classes, ", ".join(module.frozen) or "nothing")
    return module


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}


@task_wrapper("metrics.json", first_keys=METRIC_KEYS, check=check_ablation_row)
def train(cfg: DictConfig, run: Run) -> None:
    """Run one training job; its record, ``<run dir>/metrics.json``, is what the decorated call returns."""
    metrics = run.record
    check_seed(cfg.get("seed"))
    check_trainer(cfg)
    trust = trust_option(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name, run.dir)
    # Read (safely, unless trusted) before anything is built: only its records are read here, not its tensors.
    resumed = read_checkpoint(ckpt_path, "ckpt_path", trusted=trust, mmap=True) if ckpt_path else None
    # Seeded before anything is built. What draws from the global generators from here on: the weights'
    # initialisation and dropout. The data's order and augmentations have generators of their own.
    metrics["seed"] = L.seed_everything(run_seed(cfg.get("seed")), workers=True, verbose=False)

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule, trust)
    if resumed is not None:
        check_resumes(resumed, module, ckpt_path)
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"), "callback")
    name_wandb_run(cfg, run.dir)
    continue_wandb_run(cfg, resumed)
    del resumed  # its tensors are mapped from the file: not held through the fit
    loggers = run.open_loggers(cfg, {"num_parameters": module.num_parameters})
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=without_logger_only_callbacks(callbacks, loggers),
                                     logger=loggers or False)

    metrics.update(num_parameters=module.num_parameters, resumed_from=ckpt_path)
    if cfg.get("train", True):
        # Lightning reads the checkpoint as we did: weights_only unless the user trusts it.
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
        fit_metrics = _floats(trainer.callback_metrics)
        metrics.update({k: v for k, v in fit_metrics.items() if k.startswith(FIT_METRIC_PREFIXES)})
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks
                 if isinstance(c, ModelCheckpoint) and c.monitor and c.best_model_path), None)
    if cfg.get("test", True):
        # Val and test error of the best checkpoint (the current weights when there is none).
        eval_ckpt = best if best else None
        val = trainer.validate(module, datamodule=datamodule, ckpt_path=eval_ckpt, verbose=False, weights_only=True)
        test = trainer.test(module, datamodule=datamodule, ckpt_path=eval_ckpt, verbose=False, weights_only=True)
        metrics.update(_floats(val[0] if val else {}))
        metrics.update(_floats(test[0] if test else {}))
    metrics.update(epochs=trainer.current_epoch, global_step=trainer.global_step, best_checkpoint=best)
