"""What the benchmarks share: timing a call on CPU or GPU (waiting for the GPU to finish)."""

from __future__ import annotations

import time

import torch


def exact_fp32(device: torch.device) -> None:
    """Full float32 matmuls and convolutions on CUDA (TF32 off): the benchmarks that assert two implementations
    equal do it at float32's tolerance, which TF32's 10-bit mantissa would miss (differences of 1e-4 to 5e-4)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def timed(fn, device: torch.device):
    """``(seconds, fn())``; on CUDA the clock stops only when the GPU has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out
