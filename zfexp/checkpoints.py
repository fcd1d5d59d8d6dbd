"""Checkpoint files: their names, checking that a path is a complete checkpoint before anything is built, and
choosing the one ``ckpt_path=last`` resumes."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zfexp.errors import CheckpointError

LAST = "last.ckpt"  # a run's newest epoch end (or its start, before the first step)
LAST_STEP = "last_step.ckpt"  # the newest mid-epoch checkpoint of a run
RESUMABLE = (LAST, LAST_STEP)


def check_checkpoint_file(path: str | Path, key: str = "ckpt_path") -> Path:
    """``path`` as a Path when it is a complete checkpoint file (a ``torch.save`` archive whose index can be
    read: a truncated file cannot); else a :class:`CheckpointError` naming ``key``, the file and what is wrong.
    Reads only the archive's index, not the tensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        latest = "; or ckpt_path=last (the newest of this task's runs)" if key == "ckpt_path" else ""
        raise CheckpointError(f"{key}={path}: no such file; give a .ckpt written by train.py "
                              f"(logs/train/runs/<time>/checkpoints/last.ckpt){latest}")
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist()):
                raise zipfile.BadZipFile("no data.pkl in the archive")
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{key}={path}: not a complete checkpoint ({err}): the file is truncated (a copy or a "
                              "save that was cut short) or is not a file written by torch.save. Give another "
                              "checkpoint; ckpt_path=last picks the newest complete one.") from err
    return path


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint's contents (on the CPU), with the errors of a damaged file named as such."""
    path = check_checkpoint_file(path, key)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, AttributeError, ImportError) as err:
        raise CheckpointError(f"{key}={path}: the file cannot be read as a checkpoint ({type(err).__name__}: {err}); "
                              "give a .ckpt written by train.py") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{key}={path}: holds a {type(ckpt).__name__}, not a checkpoint; give a .ckpt written by "
                              "train.py")
    return ckpt


def newest_resumable(runs_dir: Path, exclude: Path | None = None) -> Path | None:
    """The newest complete ``last.ckpt`` or ``last_step.ckpt`` of the runs under ``runs_dir`` (``<run>/
    checkpoints/``), leaving out the run dir ``exclude``; ``None`` when there is none. Checkpoints are written
    atomically, so the newest file is the newest state; an incomplete one (copied by hand, cut short) is
    passed over for the next."""
    candidates = [p for name in RESUMABLE for p in runs_dir.glob(f"*/checkpoints/{name}")
                  if exclude is None or p.parent.parent != exclude]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            return check_checkpoint_file(path)
        except CheckpointError:
            continue
    return None


def with_lrn_convention(net: Mapping[str, Any], convention: str) -> dict[str, Any]:
    """A ZFNet-family network config with ``lrn.convention`` set to ``convention`` where it names none.

    New modules save the convention they were built with (``"paper"`` when unnamed), so every checkpoint
    written since the key exists names it; a checkpoint that names none predates it and was trained with
    ``nn.LocalResponseNorm``'s convention (``"torch"``), which is how it is read back."""
    net = dict(net)
    ours = str(net.get("_target_", "")).startswith("zfexp.models.")
    if ours and net.get("norm", "lrn") == "lrn" and "convention" not in (net.get("lrn") or {}):
        net["lrn"] = {**(net.get("lrn") or {}), "convention": convention}
    return net
