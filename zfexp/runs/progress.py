"""Progress that reaches the user wherever the job runs: a live bar on a terminal; elsewhere (SLURM, ``nohup``,
a Ray worker, a pipe) plain log lines, which Hydra's logging puts in stdout and the run's ``<task>.log``.

``progress(iterable, total, desc)`` is for the analysis passes (top-9, mean image, features, prepare); the
training loop's counterpart is ``callbacks.progress_bar``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("zfexp.progress")
T = TypeVar("T")


def on_terminal() -> bool:
    """Whether stdout is a terminal (a live bar can redraw itself there; in a file it is one unreadable line)."""
    return sys.stdout.isatty()


def duration(seconds: float) -> str:
    """``75.0`` -> ``"1m15s"``; ``3725`` -> ``"1h02m"``; under a minute ``"42s"``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress(iterable: Iterable[T], total: int, desc: str, unit: str = "batch", lines: int = 10,
             terminal: bool | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate ``iterable`` (``total`` items) showing progress: a tqdm bar on a terminal, else about ``lines``
    log lines (``desc: 40/100 batch (40%), 12.3 batch/s, 5s left``) and one when done; nothing when not
    ``enabled``.

    ``iter(iterable)`` is called once here: a DataLoader starts its workers once (tqdm.auto, given the
    iterable itself, would call it twice)."""
    if not enabled:
        yield from iter(iterable)
        return
    if terminal if terminal is not None else on_terminal():
        from tqdm.auto import tqdm

        yield from tqdm(iter(iterable), total=total, desc=desc, unit=unit)
        return
    every = max(1, total // max(1, lines))
    start = time.perf_counter()
    done = 0
    for item in iter(iterable):
        yield item
        done += 1
        if done % every == 0 and done < total:
            elapsed = time.perf_counter() - start
            rate = done / elapsed if elapsed > 0 else float("inf")
            log.info("%s: %d/%d %s (%d%%), %.1f %s/s, %s left", desc, done, total, unit, 100 * done // total, rate,
                     unit, duration((total - done) / rate))
    log.info("%s: %d %s in %s", desc, done, unit, duration(time.perf_counter() - start))
