"""The checks of a training config's top-level values, made before anything is built: a wrong value stops the
run with one paragraph naming its key, the value and what is valid (the values of a group, ``model`` or
``callbacks``, are checked by what they configure)."""

from __future__ import annotations

import typing

import torch
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
from omegaconf import DictConfig

from zfexp.checks import integer, one_of
from zfexp.errors import InvalidValueError
from zfexp.metrics import FIT_METRIC_PREFIXES, METRIC_KEYS
from zfexp.runs.seeding import SEED_RANGE

PRECISIONS = (*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS), 64, 32, 16)


def check_train_config(cfg: DictConfig) -> None:
    """``seed``, the ``trainer``'s counts and precision, ``freeze`` and ``from_scratch`` (which need
    ``pretrained_ckpt``) and ``optimized_metric``."""
    integer("seed", cfg.get("seed"), *SEED_RANGE, null="a seed is drawn and recorded in metrics.json")
    check_trainer(cfg)
    freeze = cfg.get("freeze")
    if freeze is not None and not cfg.get("pretrained_ckpt"):
        raise InvalidValueError(f"freeze={freeze}: fixing layers needs pretrained_ckpt=<a train.py checkpoint>; or "
                                "set freeze=null")
    if cfg.get("from_scratch", False) and not cfg.get("pretrained_ckpt"):
        raise InvalidValueError("from_scratch=true: trains the network of pretrained_ckpt from random weights (the "
                                "transfer baseline); give pretrained_ckpt=<a train.py checkpoint>, or set "
                                "from_scratch=false")
    check_optimized_metric(cfg.get("optimized_metric"))


def check_optimized_metric(metric: str | None) -> None:
    """What ``train.py`` returns to a sweeper is a metric every run records: one of :data:`METRIC_KEYS`, or a
    key under a prefix a callback fills (``perf/``, ``filters/``); checked again once the run has its metrics."""
    if metric is not None and metric not in METRIC_KEYS and not str(metric).startswith(FIT_METRIC_PREFIXES):
        raise InvalidValueError(f"optimized_metric={metric!r} is not a metric of a run; valid: {', '.join(METRIC_KEYS)}"
                                f", a key under {', '.join(FIT_METRIC_PREFIXES)} that a callback logs, or null")


def check_trainer(cfg: DictConfig) -> None:
    """The accelerator (a GPU where there is none), the epoch and step counts of ``trainer`` (a run that would
    train nothing is an error, not a result) and its precision, checked before Lightning is given them."""
    t = cfg.trainer
    accelerator = t.get("accelerator")
    if accelerator in ("gpu", "cuda") and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        raise InvalidValueError(f"trainer.accelerator={accelerator} (trainer=gpu and trainer=ddp set it): torch "
                                f"finds no GPU on this machine (torch {torch.__version__}, CUDA "
                                f"{torch.version.cuda or 'none'}); train on the CPU with trainer=default, or run where "
                                "a GPU is")
    precision = t.get("precision")
    if precision is not None:
        one_of("trainer.precision", precision, PRECISIONS,
               "or ${zfexp.bf16_where_native:}: bf16-mixed where the device computes it natively")
    max_epochs, max_steps, min_epochs = t.get("max_epochs"), t.get("max_steps", -1), t.get("min_epochs")
    integer("trainer.max_epochs", max_epochs, null="Lightning's default", unit="-1: no limit, trainer.max_steps "
            "decides; paper: 70")
    integer("trainer.max_steps", max_steps, null="no limit", unit="-1: no limit, trainer.max_epochs decides")
    integer("trainer.min_epochs", min_epochs, null="no minimum")
    if max_steps is not None and max_steps != -1 and max_steps < 1:
        raise InvalidValueError(f"trainer.max_steps={max_steps}: must be a positive number of steps, or -1 (no limit: "
                                "trainer.max_epochs decides)")
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise InvalidValueError(f"trainer.max_epochs={max_epochs}: must be at least 1 (the number of training epochs; "
                                "paper: 70)")
    if max_epochs == -1 and (max_steps is None or max_steps == -1):
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
