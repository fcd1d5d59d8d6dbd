"""Checkpoint files: their names, checking that a path is a complete checkpoint before anything is built, and
choosing the one ``ckpt_path=last`` resumes (:func:`resolve_ckpt_path`)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from zfexp.errors import CheckpointError
from zfexp.safe_load import load_torch_file, require_torch_file

log = logging.getLogger(__name__)

LAST = "last.ckpt"  # a run's newest epoch end (or its start, before the first step)
LAST_STEP = "last_step.ckpt"  # the newest mid-epoch checkpoint of a run
RESUMABLE = (LAST, LAST_STEP)


def check_checkpoint_file(path: str | Path, key: str = "ckpt_path") -> Path:
    """``path`` as a Path when it is a complete checkpoint file (a ``torch.save`` archive whose index can be
    read: a truncated file cannot; or a file of torch's pre-1.6 format); else a :class:`CheckpointError`
    naming ``key``, the file and what is wrong. Reads only the archive's index, not the tensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        latest = "; or ckpt_path=last (the newest of this task's runs)" if key == "ckpt_path" else ""
        raise CheckpointError(f"{key}={path}: no such file; give a .ckpt written by train.py "
                              f"(logs/train/runs/<time>/checkpoints/last.ckpt){latest}")
    require_torch_file(path, key, "another checkpoint; ckpt_path=last picks the newest complete one", "checkpoint")
    return path


def read_checkpoint(path: str | Path, key: str = "ckpt_path", trusted: bool = False, mmap: bool = False
                    ) -> dict[str, Any]:
    """The checkpoint's contents (on the CPU), read safely (:func:`~zfexp.safe_load.load_torch_file`; ``trusted``:
    the user's opt-in to a full unpickling), with the errors of a damaged file named as such. ``mmap``: tensors
    are read from the file only when used."""
    path = check_checkpoint_file(path, key)
    ckpt = load_torch_file(path, key, trusted=trusted, mmap=mmap)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{key}={path}: holds a {type(ckpt).__name__}, not a checkpoint; give a .ckpt written by "
                              "train.py")
    return ckpt


def check_resumes(ckpt: Mapping[str, Any], module: torch.nn.Module, path: str | Path) -> None:
    """A run resumes a checkpoint of the network it builds: every weight present, of the same shape. Else a
    :class:`CheckpointError` naming what differs, and the network config of each where they differ."""
    saved, own = ckpt.get("state_dict") or {}, module.state_dict()
    wrong = [f"{k} is {list(saved[k].shape)} there, {list(v.shape)} here" for k, v in own.items()
             if k in saved and saved[k].shape != v.shape]
    wrong += [f"{k} is missing there" for k in own if k not in saved]
    wrong += [f"{k} is not in this network" for k in saved if k not in own]
    if not wrong:
        return
    theirs = dict((ckpt.get("hyper_parameters") or {}).get("net") or {})
    ours = dict(getattr(module, "hparams", {}).get("net") or {})
    configs = "; ".join(f"model.{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in sorted({*theirs, *ours})
                        if theirs.get(k) != ours.get(k) and k != "lrn")
    more = "; ..." if len(wrong) > 3 else ""
    differ = f". The configs differ: {configs}" if configs else ""
    raise CheckpointError(f"ckpt_path={path}: its network is not the one this run builds ({'; '.join(wrong[:3])}{more})"
                          f"{differ}. Resume with the overrides of the run that wrote it (its resolved config: "
                          f"{Path(path).parent.parent / 'config.yaml'}), or start afresh with ckpt_path=null.")


def newest_resumable(runs_dir: Path, exclude: Path | None = None) -> Path | None:
    """The newest complete ``last.ckpt`` or ``last_step.ckpt`` of the runs under ``runs_dir`` (``<run>/
    checkpoints/``), leaving out the run dir ``exclude`` and runs still training (:func:`training_lock`, with a
    warning naming them); ``None`` when there is none. Checkpoints are written
    atomically, so the newest file is the newest state; an incomplete one (copied by hand, cut short) is
    passed over for the next."""
    candidates = [p for name in RESUMABLE for p in runs_dir.glob(f"*/checkpoints/{name}")
                  if exclude is None or p.parent.parent != exclude]
    training = {run: holder for run in {p.parent.parent for p in candidates} if (holder := lock_holder(run))}
    for run, holder in sorted(training.items()):
        log.warning("ckpt_path=last passes over %s: it is still training (%s)", run, holder)
    candidates = [p for p in candidates if p.parent.parent not in training]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            return check_checkpoint_file(path)
        except CheckpointError:
            continue
    return None


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str, task_name: str, current_run: Path) -> str | None:
    """``"last"`` -> the newest complete ``last.ckpt`` or ``last_step.ckpt`` among this task's earlier runs; a
    path must be a complete checkpoint file."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        runs = Path(log_dir) / task_name / "runs"
        newest = newest_resumable(runs, exclude=current_run)
        if newest is None:
            raise CheckpointError(f"ckpt_path=last: no earlier run of task {task_name!r} has a complete checkpoint to "
                                  f"resume from (looked for {runs}/*/checkpoints/{{{','.join(RESUMABLE)}}}); give a "
                                  "checkpoint path instead, or null to start afresh")
        log.info("ckpt_path=last: resuming %s", newest)
        return str(newest)
    return str(check_checkpoint_file(ckpt_path, "ckpt_path"))


LOCK = "training.lock"  # in a run dir: held by the process training it (its pid and host inside)


@contextlib.contextmanager
def training_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``<run_dir>/training.lock`` while the block runs (a run's training): ``ckpt_path=last`` passes over
    the run meanwhile. An advisory POSIX lock (``lockf``): the kernel releases it when the process ends, however
    it ends, and the processes it forks (loader workers, a logger's service) do not hold it, so a lock left behind
    by a killed run blocks nothing. Taken by the global rank zero only (the other ranks of
    a DDP run share its run dir)."""
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        yield
        return
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CheckpointError(f"{run_dir} is being trained by another process ({lock_holder(Path(run_dir))}); "
                                  "give this run a run dir of its own") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def lock_holder(run_dir: Path) -> str | None:
    """Who trains ``run_dir`` now (``"pid 123 on host"``), ``None`` when nobody holds its lock (none was taken,
    or its process has ended)."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "a process"
        fcntl.lockf(handle, fcntl.LOCK_UN)
    return None
