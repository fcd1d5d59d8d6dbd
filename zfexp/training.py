"""The training task behind ``train.py``, as a recipe: check the config, seed, instantiate, fit, test, and
record the run in ``metrics.json``.

Kept apart from ``train.py`` so tests (and notebooks) call it with a config composed by Hydra's compose API.
Where each step lives: the config checks in :mod:`zfexp.config_checks`, resuming in :mod:`zfexp.checkpoint_files`,
the seed in :mod:`zfexp.runs.seeding`, the module (with transfer from a checkpoint) in :mod:`zfexp.pretrained`,
the W&B run's name and continuation in :mod:`zfexp.runs.loggers`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, open_dict

from zfexp.checkpoint_files import check_resumes, read_checkpoint, resolve_ckpt_path, training_lock
from zfexp.config_checks import check_ablation_row, check_train_config
from zfexp.metrics import FIT_METRIC_PREFIXES, METRIC_KEYS
from zfexp.pretrained import build_module
from zfexp.runs.config_groups import instantiate_group
from zfexp.runs.lifecycle import Run, task_wrapper
from zfexp.runs.loggers import (
    WandbRunInCheckpoint,
    continue_wandb_run,
    name_wandb_run,
    without_logger_only_callbacks,
)
from zfexp.runs.seeding import run_seed
from zfexp.safe_load import trust_option

log = logging.getLogger(__name__)


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}


@task_wrapper("metrics.json", first_keys=METRIC_KEYS, check=check_ablation_row)
def train(cfg: DictConfig, run: Run) -> None:
    """Run one training job; its record, ``<run dir>/metrics.json``, is what the decorated call returns."""
    metrics = run.record
    check_train_config(cfg)
    trust = trust_option(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name, run.dir)
    # Read (safely, unless trusted) before anything is built: only its records are read here, not its tensors.
    resumed = read_checkpoint(ckpt_path, "ckpt_path", trusted=trust, mmap=True) if ckpt_path else None
    # Seeded before anything is built. What draws from the global generators from here on: the weights'
    # initialisation and dropout. The data's order and augmentations have generators of their own.
    metrics["seed"] = L.seed_everything(run_seed(cfg.get("seed")), workers=True, verbose=False)

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule, trust)
    if ckpt_path and resumed is not None:  # resumed: what ckpt_path holds
        check_resumes(resumed, module, ckpt_path)
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"), "callback") + [WandbRunInCheckpoint()]
    name_wandb_run(cfg, run.dir)
    continue_wandb_run(cfg, resumed)
    del resumed  # its tensors are mapped from the file: not held through the fit
    loggers = run.open_loggers(cfg, {"num_parameters": module.num_parameters})
    sync_batchnorm_where_it_runs(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=without_logger_only_callbacks(callbacks, loggers),
                                     logger=loggers or False)

    metrics.update(num_parameters=module.num_parameters, resumed_from=ckpt_path)
    if cfg.get("train", True):
        # Lightning reads the checkpoint as we did: weights_only unless the user trusts it.
        with training_lock(run.dir):  # ckpt_path=last in another process passes over this run meanwhile
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
        fit_metrics = _floats(trainer.callback_metrics)
        metrics.update({k: v for k, v in fit_metrics.items() if k.startswith(FIT_METRIC_PREFIXES)})
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks
                 if isinstance(c, ModelCheckpoint) and c.monitor and c.best_model_path), None)
    if cfg.get("test", True):
        # Val and test error of the best checkpoint (the current weights when there is none).
        val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        metrics.update(_floats(val[0] if val else {}))
        metrics.update(_floats(test[0] if test else {}))
    metrics.update(epochs=trainer.current_epoch, global_step=trainer.global_step, best_checkpoint=best)
    log.info("%s", run_summary(metrics, run.dir))


def sync_batchnorm_where_it_runs(cfg: DictConfig) -> None:
    """``trainer.sync_batchnorm`` on CUDA only (SyncBatchNorm refuses CPU modules): on a CPU it is set false, as a
    log line says, and each process normalises with its own batch's statistics."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cfg.trainer.get("sync_batchnorm") and not on_cuda:
        log.info("trainer.sync_batchnorm=true: SyncBatchNorm runs on CUDA only; on the %s each process normalises "
                 "with its own batch's statistics", "CPU" if accelerator in ("auto", "cpu") else accelerator)
        with open_dict(cfg):
            cfg.trainer.sync_batchnorm = False


def run_summary(metrics: dict[str, Any], run_dir: Any) -> str:
    """The run's last log line: its errors, its steady-state training speed and where its record is."""
    shown = [f"{key} {metrics[key]:.2f}" for key in ("test/top1_err", "val/top1_err") if key in metrics]
    if "perf/train_img_per_s" in metrics:
        shown.append(f"training {metrics['perf/train_img_per_s']:,.0f} images/s (steady state, "
                     f"{metrics['perf/step_ms']:.1f} ms a step)")
    return f"done: {', '.join(shown) or 'no metrics'}; metrics.json in {run_dir}"
