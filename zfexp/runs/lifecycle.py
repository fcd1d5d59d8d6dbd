"""One run lifecycle for every entry point (``train.py``, ``zfexp.analyze``, ``zfexp.features``).

A task is a function ``task(cfg, run)`` wrapped by :func:`task_wrapper`, which

1. makes the run dir (``paths.output_dir``, Hydra's ``logs/<task>/runs/<time>/``) and saves the resolved config
   in it as ``config.yaml`` (resolving first stops a run with a missing mandatory value before anything else);
2. times the task;
3. in a ``finally``, writes the run's record (``metrics.json`` for training, ``<task>.json`` for the others) with
   ``status: completed``, or ``status: failed`` and the error, whatever the task had recorded so far, and the wall
   time, on the global-zero process only;
4. finalises the loggers the task opened and finishes the W&B run, so that every job of a multirun is its own
   W&B run even when one fails.

Tests and notebooks call the wrapped task with a config from Hydra's compose API; errors leave it as they
were raised (the entry points' ``main`` turns a user's mistake into one paragraph: ``reporting``).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import hydra
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

import zfexp.runs.resolvers  # noqa: F401  (registers the resolvers the configs use)
from zfexp.runs.config_groups import instantiate_group
from zfexp.runs.loggers import finish_wandb, record_in_wandb_summary
from zfexp.runs.reporting import reported_errors, user_message

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class Run:
    """What a task gets besides its config: its directory, the record it fills as it goes (written whether the
    task completes or fails), and the loggers it opened (finalised when it ends)."""

    dir: Path
    record: dict[str, Any] = field(default_factory=dict)
    loggers: list[Logger] = field(default_factory=list)

    def open_loggers(self, cfg: DictConfig, hparams: dict[str, Any] | None = None) -> list[Logger]:
        """The config's ``logger`` group, with the resolved config (and ``hparams``) logged to each."""
        self.loggers = instantiate_group(cfg.get("logger"), "logger")
        config = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))  # a DictConfig's: a dict
        values = {**config, **(hparams or {})}
        for lg in self.loggers:
            lg.log_hyperparams(values)
        return self.loggers


def task_wrapper(record_name: str, first_keys: Sequence[str] = (), check: Callable[[DictConfig], None] | None = None,
                 ) -> Callable[[Callable[[DictConfig, Run], None]], Callable[[DictConfig], dict[str, Any]]]:
    """Decorate ``task(cfg, run)``; the decorated function takes ``cfg`` and returns the record. ``record_name``:
    the record's file name in the run dir; ``first_keys``: keys written first, in this order, when present;
    ``check``: checks of values that resolving the config depends on, run before it is resolved."""

    def decorate(task: Callable[[DictConfig, Run], None]) -> Callable[[DictConfig], dict[str, Any]]:
        @functools.wraps(task)
        def run_task(cfg: DictConfig) -> dict[str, Any]:
            run = Run(Path(cfg.paths.output_dir))
            run.dir.mkdir(parents=True, exist_ok=True)
            lightning_logs_to_run_log()
            run.record["status"] = "started"
            start = time.time()
            try:
                if check is not None:
                    check(cfg)
                # Beside Hydra's unresolved .hydra/config.yaml: what this run really used.
                OmegaConf.save(cfg, run.dir / "config.yaml", resolve=True)
                task(cfg, run)
                run.record["status"] = "completed"
                return run.record
            except BaseException as err:
                run.record.update(status="failed", error=f"{type(err).__name__}: {user_message(err) or err}")
                raise
            finally:
                run.record["wall_time_s"] = round(time.time() - start, 2)
                if getattr(rank_zero_only, "rank", 0) == 0:
                    write_record(run.dir / record_name, run.record, first_keys)
                    record_in_wandb_summary(run.loggers, run.record)
                for lg in run.loggers:
                    lg.finalize("success" if run.record["status"] == "completed" else "failed")
                finish_wandb()

        return run_task

    return decorate


def lightning_logs_to_run_log() -> None:
    """Send Lightning's messages (the model summary, checkpoint restores, why fit stopped) through the root
    logger's handlers, Hydra's console and ``<task>.log``. Imported before Hydra set logging up, Lightning gave
    itself a console handler and stopped propagating, so they missed the run's log file. Without handlers on
    the root logger (a notebook, a test), Lightning's own stays."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lightning_log = logging.getLogger(name)
        for handler in list(lightning_log.handlers):
            if type(handler) is logging.StreamHandler:  # the console handlers Lightning added; never a file
                lightning_log.removeHandler(handler)
        lightning_log.propagate = True


def write_record(path: Path, record: dict[str, Any], first_keys: Sequence[str] = ()) -> Path:
    """``record`` as indented JSON, ``first_keys`` first."""
    ordered = {k: record[k] for k in first_keys if k in record}
    ordered.update({k: v for k, v in record.items() if k not in ordered})
    path.write_text(json.dumps(ordered, indent=2, default=str) + "\n")
    return path


def hydra_entry_point(task: Callable[[DictConfig], dict[str, Any]], config_name: str) -> Callable[[], None]:
    """``main()`` of a ``python -m zfexp.<task>`` command: Hydra composes ``conf/<config_name>.yaml`` with the
    command line and runs the wrapped ``task``; a user's mistake ends in one paragraph (``reporting``)."""

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        with reported_errors():
            task(cfg)

    return main
