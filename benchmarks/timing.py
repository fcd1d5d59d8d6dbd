"""What the benchmarks share: timing a call on CPU or GPU (waiting for the GPU to finish)."""

from __future__ import annotations

import time

import torch


def timed(fn, device: torch.device):
    """``(seconds, fn())``; on CUDA the clock stops only when the GPU has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out
