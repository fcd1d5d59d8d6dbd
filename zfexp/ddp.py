"""Lightning's DDP strategy, with no host-device synchronisation in a training step (``trainer=ddp``)."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import cast

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class DDPStrategy(LightningDDPStrategy):
    """Lightning's ``strategy="ddp"``, its arguments and behaviour, but one: at the start of every training step
    Lightning (2.6) broadcasts rank zero's SIGTERM flag as a tensor on the training device and reads it back with
    ``.item()``, which on a GPU makes the host wait for the device every step (Lightning-AI/pytorch-lightning#21487).
    The flag is the host's own, so here it crosses over a process group of the host (gloo; the default group when
    that is gloo already): every process still learns of a SIGTERM at the same step and stops there, and no step
    waits for the device."""

    _host_group: dist.ProcessGroup | None = None

    def setup(self, trainer: L.Trainer) -> None:
        super().setup(trainer)
        loop = trainer.fit_loop.epoch_loop
        if trainer.state.fn == TrainerFn.FITTING and hasattr(loop, "_broadcast_sigterm_tensor"):
            if self._host_group is None and dist.get_backend() != "gloo":
                # Every process runs setup (a collective call), and every process is a member of the group: a
                # ProcessGroup, never new_group's NON_GROUP_MEMBER.
                self._host_group = cast("dist.ProcessGroup", dist.new_group(backend="gloo"))
            # Replaced on this loop object alone: Lightning has no hook for it.
            loop._broadcast_sigterm_tensor = partial(  # type: ignore[method-assign]
                broadcast_sigterm_on_host, trainer, self._host_group)


def broadcast_sigterm_on_host(trainer: L.Trainer, group: dist.ProcessGroup | None) -> None:
    """Lightning's ``_TrainingEpochLoop._broadcast_sigterm_tensor`` over a host process group: raise
    ``SIGTERMException`` on every process when rank zero has received a SIGTERM."""
    try:
        flag = torch.tensor([1 if getattr(trainer, "received_sigterm", False) else 0])
        dist.broadcast(flag, src=0, group=group)
    except Exception:
        flag = torch.tensor([0])
    if flag.numpy()[0] == 1:  # host memory: nothing to wait for
        with contextlib.suppress(Exception):
            dist.barrier(group=group)  # as Lightning: every process reaches this point before any exits
        raise SIGTERMException()
