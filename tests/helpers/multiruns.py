"""Hydra multiruns of train.py, as the sweep tests start and read them."""

from __future__ import annotations

from tests.conftest import train_cmd


def multirun_cmd(*overrides: str) -> list[str]:
    cmd = train_cmd(*overrides)
    return cmd[:2] + ["-m"] + cmd[2:]  # Hydra's flags go before the overrides


def only_sweep(log_dir):
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    return sweep
