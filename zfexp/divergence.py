"""A training step that never waits for the host, and a run that still stops at a non-finite loss or gradient.

Asking the device "is the loss finite?" every step (``loss.item()``, ``bool(tensor)``) makes the host wait for the
step's forward, and the GPU then idles while the host prepares the rest of the step. Instead, after backward:

1. the step's flags are computed on the device: is the loss not finite, are the gradients not finite (one fused
   check over them, the one AMP's ``GradScaler`` makes); under DDP they are summed over the processes by an
   all-reduce, also on the device;
2. the optimizer gets the result as ``found_inf`` and skips the update on the device when it is set (fused SGD
   does, as under AMP). The flag is sticky: once a step has diverged no later update is applied, so the weights
   stay those of before that step until the host stops the run;
3. the step's record (its loss and the flags) is copied to host memory without waiting (a non-blocking copy and
   an event); the host reads step ``s``'s record at step ``s + READ_LAG``, waiting there only if the device is
   more than ``READ_LAG`` steps behind (it then still has a step queued, so it never idles), and reads every record
   before validation, before any checkpoint is written and when training ends. Every process reads the same steps'
   records at the same points and sees the same all-reduced flags, so every process stops at the same step.

The loss of the newest record whose copy has arrived is there for progress bars and loggers
(:meth:`DivergenceGuard.newest_arrived`), without any wait.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim import Optimizer

from zfexp.errors import NonFiniteLossError

if TYPE_CHECKING:
    # The host class, for the type checker alone: at runtime the mixin derives from object, and L.LightningModule
    # comes after it in the module's bases.
    from lightning.pytorch import LightningModule as _Host
else:
    _Host = object

# The host reads step s's record at step s + READ_LAG: far enough behind that its copy has normally arrived.
READ_LAG = 2


@dataclass(frozen=True)
class StepRecord:
    """What the host learns of one training step, ``READ_LAG`` steps or more after it."""

    step: int  # the global step it ran at (optimizer steps before it)
    epoch: int  # 0-based
    loss: float  # this process's loss
    nonfinite_loss: int  # processes whose loss was NaN or infinite
    nonfinite_grads: int  # processes whose gradients were (under DDP, all of them once averaged)

    @property
    def diverged(self) -> bool:
        return self.nonfinite_loss > 0 or self.nonfinite_grads > 0


class _PendingRecord:
    """A record on its way to the host: ``[loss, nonfinite_loss, nonfinite_grads]`` copied into host memory."""

    def __init__(self, step: int, epoch: int, values: torch.Tensor):
        self.step, self.epoch = step, epoch
        on_gpu = values.device.type == "cuda"
        self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=on_gpu)
        self.host.copy_(values, non_blocking=on_gpu)
        self.event: torch.cuda.Event | None = None
        if on_gpu:
            self.event = torch.cuda.Event(blocking=True)  # a wait for it yields the CPU rather than spinning
            self.event.record()
        self.record: StepRecord | None = None

    def arrived(self) -> bool:
        return self.event is None or self.event.query()

    def read(self) -> StepRecord:
        """The record, waiting for its copy if it has not arrived (the caller decides when that may happen)."""
        if self.record is None:
            if self.event is not None:
                self.event.synchronize()
            loss, bad_loss, bad_grads = self.host.numpy().tolist()  # host memory: no device involved
            self.record = StepRecord(self.step, self.epoch, loss, int(bad_loss), int(bad_grads))
        return self.record


class DivergenceGuard:
    """Finds a diverged training step on the device, has the optimizer skip its update there, and tells the host
    later (see the module's docstring). One per LightningModule::

        guard.check_step(loss, optimizer, step, epoch)   # after backward, before optimizer.step (any process count)
        for record in guard.take(through_step):           # the records the host may read now, oldest first
            if record.diverged: raise ...
    """

    def __init__(self) -> None:
        self._pending: deque[_PendingRecord] = deque()
        self._diverged: torch.Tensor | None = None  # [1] float, 1.0 once any step diverged: optimizer.found_inf
        self._one: torch.Tensor | None = None
        self.newest: StepRecord | None = None  # the newest record the host has, for progress bars and loggers

    def check_step(self, loss: torch.Tensor, optimizer: Optimizer, step: int, epoch: int,
                   loss_scaled: bool = False) -> StepRecord | None:
        """Flag this step on the device and hand the flag to ``optimizer``: a fused one skips the update on the
        device, and the step's record goes to the host without waiting (``None`` is returned). Any other optimizer
        cannot skip it, so for it the host reads the record now (a wait) and gets it back, to stop before the
        update. ``loss_scaled``: the gradients are still multiplied by AMP's loss scale (fp16, ``16-mixed``), whose
        ``GradScaler`` skips their overflows itself and sets ``found_inf``: only the loss is checked, and read now."""
        loss = loss.detach()
        device = loss.device
        if self._diverged is None or self._one is None or self._diverged.device != device:  # made together
            self._diverged = torch.zeros(1, device=device)
            self._one = torch.ones(1, device=device)
        bad_grads = torch.zeros(1, device=device)
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for group in optimizer.param_groups if not loss_scaled else ():
            for p in group["params"]:
                if p.grad is not None:
                    by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            # Sets bad_grads where any gradient is NaN or infinite; the multiplication by one leaves their bits.
            torch._amp_foreach_non_finite_check_and_unscale_(grads, bad_grads, self._one)
        flags = torch.cat([(~torch.isfinite(loss)).float().view(1), bad_grads])  # [2]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags)  # enqueued on the device (NCCL) or done by the host (gloo): no wait either way
        torch.maximum(self._diverged, flags.sum().clamp_max(1).view(1), out=self._diverged)
        pending = _PendingRecord(step, epoch, torch.cat([loss.float().view(1), flags]))
        # Per group: a resumed optimizer takes its groups' settings from the checkpoint.
        if loss_scaled or not all(group.get("fused") for group in optimizer.param_groups):
            self.newest = pending.read()
            return self.newest
        # Read by torch's fused optimizers with getattr, as GradScaler sets it: Optimizer does not declare it.
        optimizer.found_inf = self._diverged  # type: ignore[attr-defined]
        self._pending.append(pending)
        return None

    def take(self, through_step: float) -> list[StepRecord]:
        """The records of the steps up to ``through_step`` (``float("inf")``: all), oldest first, removed from
        the queue; waits for those whose copy has not arrived. Every process must call it at the same points."""
        taken = []
        while self._pending and self._pending[0].step <= through_step:
            taken.append(self._pending.popleft().read())
        if taken and (self.newest is None or taken[-1].step >= self.newest.step):
            self.newest = taken[-1]
        return taken

    def newest_arrived(self) -> StepRecord | None:
        """The newest record whose copy has arrived, without waiting (for display: a decision uses :meth:`take`)."""
        for pending in reversed(self._pending):
            if pending.arrived():
                self.newest = pending.read()
                break
        return self.newest

    @property
    def diverged_on_device(self) -> torch.Tensor | None:
        """``[1]`` float on the device, 1.0 once a step diverged (``None`` before the first step)."""
        return self._diverged


PAPER_LR = 1e-2


def divergence_message(record: StepRecord, trainer=None) -> str:
    """What to tell the user when ``record``'s step diverged: where, and how to resume (from the newest checkpoint
    of ``trainer``'s checkpoint callbacks that have a ``latest_checkpoint``, with a tenfold lower learning rate)."""
    world = trainer.world_size if trainer is not None else 1
    if record.nonfinite_loss:
        what = f"train/loss is {record.loss}" if world == 1 else \
            f"train/loss is not finite on {record.nonfinite_loss} of {world} processes"
    else:
        what = f"the gradients are not finite (train/loss {record.loss:.4g})"
    lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer is not None and trainer.optimizers else None
    where = f"{what} at epoch {record.epoch + 1}, global step {record.step}"
    where += f" (lr={lr:g})" if lr is not None else ""
    stopped = "Its update was skipped, as were those of any later step, and training stopped"
    latest = next((c.latest_checkpoint for c in (trainer.checkpoint_callbacks if trainer else [])
                   if getattr(c, "latest_checkpoint", None)), None)
    # Tenfold lower, and at most the paper's 0.01: from a wildly wrong lr one resume is enough.
    lower = f"module.lr={min(lr / 10, PAPER_LR):g}" if lr is not None else "a lower module.lr"
    if latest is None:
        return (f"{where}. {stopped}. This run wrote no checkpoint to resume from: start again with {lower}, or "
                "check the inputs (data.preprocess).")
    path, step = latest
    return (f"{where}. {stopped}; the newest checkpoint, {path} (global step {step}), holds finite weights from "
            f"before this step. Resume from it with a lower learning rate: python train.py ckpt_path=last {lower} "
            "(and the rest of this run's overrides).")


def is_finite_model(model: torch.nn.Module) -> bool:
    """True when every floating-point parameter and buffer is finite (a checkpoint of it is worth keeping). One
    host-device synchronisation for the whole model."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class StopOnDivergence(_Host):
    """LightningModule hooks, mixed in before ``L.LightningModule``: each training step checked on the device by a
    :class:`DivergenceGuard` after backward, and the run stopped with :class:`NonFiniteLossError` at the first
    diverged step the host reads (``READ_LAG`` steps later; before validation, a checkpoint or the end of training
    at the latest). The module's ``training_step`` sets ``self.step_loss`` (its loss, detached). Also logs
    ``train/loss_step`` to every logger, at the trainer's logging interval, from the records the host reads, and
    gives progress bars the newest loss without waiting (:attr:`latest_train_loss`)."""

    step_loss: torch.Tensor | None = None
    _guard: DivergenceGuard | None = None

    @property
    def divergence(self) -> DivergenceGuard:
        if self._guard is None:
            self._guard = DivergenceGuard()
        return self._guard

    @property
    def latest_train_loss(self) -> float | None:
        """The training loss of the newest step whose loss has reached the host (a step or two back on a GPU)."""
        record = self.divergence.newest_arrived()
        return record.loss if record is not None else None

    def on_train_start(self) -> None:
        """A checkpoint of a run whose SGD was not fused restores its param groups' ``fused``: fused again, so
        that a resumed run's diverged steps are skipped on the device too."""
        super().on_train_start()
        for optimizer in self.trainer.optimizers:
            if isinstance(optimizer, torch.optim.SGD) and optimizer.defaults.get("fused"):
                for group in optimizer.param_groups:
                    group["fused"], group["foreach"] = True, None

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        assert self.step_loss is not None, "training_step sets self.step_loss"
        now = self.divergence.check_step(self.step_loss, optimizer, self.global_step, self.current_epoch, scaled)
        if now is not None:  # an optimizer that cannot skip on the device: read at once, before its update
            self._read_step_records([now])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._read_step_records(self.divergence.take(self.global_step - READ_LAG))

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == TrainerFn.FITTING:  # validation within fit: not of a diverged run
            self._read_every_step_record()

    def on_train_epoch_end(self) -> None:
        self._read_every_step_record()

    def on_train_end(self) -> None:
        self._read_every_step_record()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._read_every_step_record()  # never a checkpoint of a diverged run
        super().on_save_checkpoint(checkpoint)

    def _read_every_step_record(self) -> None:
        self._read_step_records(self.divergence.take(float("inf")))

    def _read_step_records(self, records: list[StepRecord]) -> None:
        trainer = self._trainer
        for record in records:
            if record.diverged:
                raise NonFiniteLossError(divergence_message(record, trainer))
            # Set on the trainer by Lightning's logger connector, which Trainer's class does not declare.
            every = trainer.log_every_n_steps if trainer is not None else 0  # type: ignore[attr-defined]
            if every and (record.step + 1) % every == 0:
                for logger in self.loggers:
                    logger.log_metrics({"train/loss_step": record.loss, "epoch": record.epoch}, step=record.step + 1)
