"""Batches copied to the GPU on a stream of their own, overlapped with the training step before them."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device


class CopyOnSideStream:
    """A LightningDataModule's ``transfer_batch_to_device`` (mixed in before ``L.LightningDataModule``): on CUDA the
    batch's copy is issued on a copy stream, and the compute stream waits for it there, on the device, not the host.

    Lightning's default copies on the compute stream, so the step that needs the batch (and every kernel queued
    after it) waits behind the copy; here, since a training step never makes the host wait, the host is a step or
    more ahead of the GPU when it asks for the next batch, and the copy runs while the GPU computes the step
    before. The batch's tensors are marked as used on the compute stream (``record_stream``), so that their memory
    is not reused before that stream is done with them. The loader's pinned host memory makes the copy
    asynchronous. On any other device, Lightning's own transfer."""

    _copy_streams: dict[torch.device, torch.cuda.Stream] | None = None

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if device.type != "cuda":
            return move_data_to_device(batch, device)
        streams = self._copy_streams if self._copy_streams is not None else {}
        self._copy_streams = streams
        if device not in streams:
            streams[device] = torch.cuda.Stream(device)
        copy = streams[device]
        compute = torch.cuda.current_stream(device)
        # The copy stream allocates from a pool of its own: no wait for the compute stream's kernels before it.
        with torch.cuda.stream(copy):
            moved = move_data_to_device(batch, device)
        compute.wait_stream(copy)
        for tensor in _tensors(moved):
            if tensor.device.type == "cuda":
                tensor.record_stream(compute)
        return moved


def _tensors(data: Any):
    """Every tensor in a batch (tensors, and lists, tuples and dicts of them)."""
    if isinstance(data, torch.Tensor):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _tensors(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _tensors(value)
