"""``CrashSafeCheckpoint``: ``last.ckpt`` every N steps and on an exception, never with broken weights."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from zfexp.module import is_finite_model


class CrashSafeCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that keeps ``last.ckpt`` fresh so a killed or crashed run resumes close to
    where it stopped (``ckpt_path=last``).

    It saves every ``every_n_train_steps`` steps and, when an exception stops training (Ctrl-C, an
    unreadable image, a scheduler's SIGTERM), once more, but never when a weight or buffer is NaN or
    infinite: that would replace the last good checkpoint with a useless one.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 500, **kwargs):
        if every_n_train_steps <= 0:
            raise ValueError(f"CrashSafeCheckpoint: every_n_train_steps={every_n_train_steps} must be positive")
        kwargs.setdefault("save_last", True)
        kwargs.setdefault("save_top_k", 0)
        kwargs.setdefault("save_on_exception", True)
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, **kwargs)

    def _should_save_on_exception(self, trainer: L.Trainer) -> bool:
        return super()._should_save_on_exception(trainer) and is_finite_model(trainer.lightning_module)
