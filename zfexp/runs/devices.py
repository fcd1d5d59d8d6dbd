"""The ``device`` value of the analysis entry points (``zfexp.analyze``, ``zfexp.features``)."""

from __future__ import annotations

import torch

from zfexp.checks import one_of

DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str) -> None:
    one_of("device", name, DEVICES)


def device_of(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
