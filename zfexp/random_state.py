"""The global random generators of a process (torch, CUDA, numpy, Python): saved into checkpoints and restored,
and kept out of reach of work that must not change a run's numbers (analyses between training steps)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import torch


def random_state() -> dict[str, Any]:
    """The state of every global generator this process draws from during training. CUDA: the current
    device's only; under DDP every rank draws the same numbers (one seed, the same shapes), so rank zero's
    states are every rank's."""
    # The legacy tuple: numpy types it as a dict or the tuple (a dict for other bit generators), and the global
    # generator is always an MT19937.
    state_tuple = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True))
    name, keys, pos, has_gauss, cached_gaussian = state_tuple
    # Tensors and plain numbers only: checkpoints must load with torch.load(weights_only=True).
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Restore what :func:`random_state` returned (a CUDA state only where CUDA is in use)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Whatever the block draws, the generators are as before afterwards: an analysis run between epochs
    leaves training's random numbers unchanged (and, under DDP, the ranks in step)."""
    state = random_state()
    try:
        yield
    finally:
        set_random_state(state)
