"""The loggers of a run: W&B offline unless credentials are found, a multirun's jobs named and grouped, a
resumed run continuing its W&B run (the id kept in the checkpoints by :class:`WandbRunInCheckpoint`), and the
run-finishing rule."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    """True when W&B could log online: ``WANDB_API_KEY`` is set or ``~/.netrc`` has the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        # No host in the URL: the netrc's default entry, which it also gives for a host it does not list.
        return netrc.netrc().authenticators(host or "default") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_offline(offline: bool | None = None) -> bool:
    """Whether W&B logs offline: ``WANDB_MODE`` from the environment when set, else ``offline``, else offline
    unless credentials are present."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun"):
        return True
    if mode == "online":
        return False
    return offline if offline is not None else not wandb_credentials_present()


def wandb_logger(
    save_dir: str,
    project: str = "zfexp",
    offline: bool | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    job_type: str | None = None,
    log_model: bool = False,
    **kwargs,
) -> WandbLogger:
    """A ``WandbLogger`` whose run lives under ``save_dir/wandb/``.

    ``offline=None`` (the default) logs online only when credentials are present; otherwise offline, to be
    uploaded later with ``wandb sync <save_dir>/wandb/offline-run-*``. A ``WANDB_MODE`` set in the environment
    wins over both.
    """
    offline = wandb_offline(offline)
    if offline:
        log.info("W&B is offline (no credentials, or offline=true); sync later with "
                 "`wandb sync %s/wandb/offline-run-*`",
                 save_dir)
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(save_dir=save_dir, project=project, offline=offline, name=name, group=group,
                       tags=list(tags) if tags else None, job_type=job_type, log_model=log_model, **kwargs)


WANDB_RUN_KEY = "wandb_run_id"  # where a checkpoint keeps the W&B run it was logged to


def wandb_run_id(loggers: Sequence) -> str | None:
    """The id of the W&B run among ``loggers`` (``None`` without one, or on a rank that does not log)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger.experiment, "id", None):
            return str(logger.experiment.id)
    return None


class WandbRunInCheckpoint(Callback):
    """Keeps the id of the run's W&B run in every checkpoint (under :data:`WANDB_RUN_KEY`), so that a run
    resumed from it logs to the same W&B run (:func:`continue_wandb_run`)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        run_id = wandb_run_id(trainer.loggers)
        if run_id is not None:
            checkpoint[WANDB_RUN_KEY] = run_id


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


def record_in_wandb_summary(loggers: Sequence, record: dict) -> None:
    """The run's record (``metrics.json``: final val/test errors, epochs, status, ...) in the W&B run summary,
    what the runs table and a sweep's comparison read; the plain values only (numbers, strings)."""
    values = {k: v for k, v in record.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            try:
                logger.experiment.summary.update(values)
            except Exception as err:  # called while a failed run is wound up: never hide the run's own error
                log.warning("the W&B run summary was not updated: %s: %s", type(err).__name__, err)


def finish_wandb() -> None:
    """Close the active W&B run, if any: without it every job of a multirun would log into one run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
    if wandb is not None and hasattr(wandb, "teardown"):
        # Shut W&B's service down now, while the process is healthy: a worker process that exits after its
        # job (Ray's max_calls=1) otherwise trips over a half-closed service at exit.
        wandb.teardown()
