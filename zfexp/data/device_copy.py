"""Batches copied to the GPU on a stream of their own, overlapped with the training step before them."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning_utilities.core.apply_func import apply_to_collection


class CopyOnSideStream:
    """A LightningDataModule's ``transfer_batch_to_device`` (mixed in before ``L.LightningDataModule``): on CUDA the
    batch's copy is issued on a copy stream, and the compute stream waits for it there, on the device, not the host.

    Lightning's default copies on the compute stream, so the step that needs the batch (and every kernel queued
    after it) waits behind the copy; here, since a training step never makes the host wait, the host is a step or
    more ahead of the GPU when it asks for the next batch, and the copy runs while the GPU computes the step
    before. The batch's tensors are marked as used on the compute stream (``record_stream``), so that their memory
    is not reused before that stream is done with them. The loader's pinned host memory makes the copy
    asynchronous. On any other device, Lightning's own transfer."""

    _copy_stream: torch.cuda.Stream | None = None  # made at the first batch (a process trains on one GPU)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if device.type != "cuda":
            return move_data_to_device(batch, device)
        if self._copy_stream is None or self._copy_stream.device != device:
            self._copy_stream = torch.cuda.Stream(device)
        compute = torch.cuda.current_stream(device)
        # The copy stream allocates from a pool of its own: no wait for the compute stream's kernels before it.
        with torch.cuda.stream(self._copy_stream):
            moved = move_data_to_device(batch, device)
        compute.wait_stream(self._copy_stream)
        apply_to_collection(moved, torch.Tensor, lambda tensor: tensor.record_stream(compute))
        return moved
