"""Logger factories for the configs: W&B offline unless credentials are found, and the run-finishing rule."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Sequence
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    """True when W&B could log online: ``WANDB_API_KEY`` is set or ``~/.netrc`` has the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
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
