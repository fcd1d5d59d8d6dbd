"""The seed a run's processes share: the configured one, or one drawn (and recorded) for ``seed=null``."""

from __future__ import annotations

import os
import secrets

from zfexp.errors import InvalidValueError
from zfexp.runs.launchers import launch_digest, shared_launch_id

SEED_RANGE = (0, 2**32 - 1)  # what numpy's generator accepts, and so seed_everything


def run_seed(seed: int | None) -> int:
    """The seed this process runs with: the configured one; for ``seed=null`` one drawn from the OS. Every
    process of one DDP run must draw the same: the extra processes Lightning's DDP launches (``LOCAL_RANK`` > 0)
    take rank zero's from ``PL_GLOBAL_SEED``; processes started together by an external launcher take one
    derived from the launch they share (:func:`~zfexp.runs.launchers.shared_launch_id`)."""
    if seed is not None:
        return int(seed)
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get("PL_GLOBAL_SEED"):
        return int(os.environ["PL_GLOBAL_SEED"])
    launch = shared_launch_id()
    if launch is not None:
        return launch_digest(launch) % (SEED_RANGE[1] + 1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InvalidValueError("seed=null: this process is one of several started together (WORLD_SIZE > 1) by a "
                                "launcher that names no run (torchrun without --rdzv-id or --standalone, or "
                                "another), so the processes cannot draw one seed; give seed=<an integer>")
    return secrets.randbelow(SEED_RANGE[1] + 1)
