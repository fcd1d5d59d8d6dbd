"""``TrainingSpeed``: the steady-state training speed of a run, per epoch, measured without waiting for the device."""

from __future__ import annotations

import functools
import statistics
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.data import extract_batch_size

from zfexp.checks import integer
from zfexp.runs.config_groups import config_key


class TrainingSpeed(Callback):
    """Logs per epoch, to every logger and into ``metrics.json`` (the last epoch's):

    - ``perf/train_img_per_s``: training images per second, all processes together;
    - ``perf/step_ms``: the median time of a training step, from one step's end to the next's (loading the batch
      included), in milliseconds;
    - ``perf/peak_mem_gib``: on a GPU, the most memory torch's tensors took during the epoch (allocated, GiB, its
      validation included; the largest of the processes).

    Only training steps count: a mark is taken at the end of every step (a CUDA event on a GPU, recorded on the
    compute stream: the host never waits for it; the clock on a CPU) and the steps are timed from mark to mark.
    Left out: the first ``warmup_steps`` steps of the fit (compilation, cuDNN's autotuning, loader start-up; at most
    half of the first epoch), the first step of every epoch (whatever ran before it: validation, the analyses of
    the callbacks, loader workers starting), and a step after which a checkpoint was written or a validation ran
    (``trainer.val_check_interval`` within the epoch). The marks are read when the epoch ends, after validation.

    Args:
        warmup_steps: steps at the start of the fit not timed (paper scale: compiling takes the first few).
    """

    def __init__(self, warmup_steps: int = 50):
        integer(f"{config_key(type(self).__name__)}.warmup_steps", warmup_steps, low=0,
                unit="training steps at the start of the fit that are not timed")
        self.warmup_steps = warmup_steps
        self._warmup = warmup_steps
        self._steps = 0  # training steps of this fit so far
        self._marks: list[tuple[float | torch.cuda.Event, int, bool]] = []  # (mark, images, timed) per step
        self._interrupted = False  # a checkpoint or a validation since the last mark

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps = 0
        batches = trainer.num_training_batches
        # Short runs (a test, a debug run) still get a figure: warm-up takes at most half of the first epoch.
        self._warmup = min(self.warmup_steps, int(batches) // 2) if batches != float("inf") else self.warmup_steps

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._marks = []
        self._interrupted = False
        if _on_gpu(pl_module):
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._steps += 1
        mark: float | torch.cuda.Event
        if _on_gpu(pl_module):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            mark = event
        else:
            mark = time.perf_counter()
        timed = self._steps > self._warmup and not self._interrupted and bool(self._marks)
        self._marks.append((mark, extract_batch_size(batch), timed))
        self._interrupted = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._interrupted = True  # its time is in the next step's interval

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._interrupted = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._marks:
            return
        if isinstance(self._marks[-1][0], torch.cuda.Event):
            self._marks[-1][0].synchronize()  # the epoch's end: validation has waited for the device already
        intervals, images = [], 0
        for (before, _, _), (after, n, timed) in zip(self._marks[:-1], self._marks[1:], strict=True):
            if timed:
                intervals.append(_seconds(before, after))
                images += n
        if not intervals:
            return
        log = functools.partial(pl_module.log, on_step=False, on_epoch=True, sync_dist=True)
        log("perf/train_img_per_s", images / sum(intervals), reduce_fx="sum")
        log("perf/step_ms", 1e3 * statistics.median(intervals), reduce_fx="mean")
        if _on_gpu(pl_module):
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            log("perf/peak_mem_gib", peak, reduce_fx="max")


def _seconds(before: float | torch.cuda.Event, after: float | torch.cuda.Event) -> float:
    """The time from mark ``before`` to mark ``after``: two clock readings, or two CUDA events (an epoch's marks
    are all of one kind)."""
    if isinstance(after, float):
        assert isinstance(before, float), "a clock reading after a CUDA event"
        return after - before
    assert isinstance(before, torch.cuda.Event), "a CUDA event after a clock reading"
    return before.elapsed_time(after) / 1e3


def _on_gpu(pl_module: L.LightningModule) -> bool:
    return pl_module.device.type == "cuda"
