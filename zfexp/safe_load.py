"""Opening a torch file without running code stored in it.

``torch.save`` pickles, and a pickle can name any callable to be called when it is read: a ``.ckpt`` passed on
by someone else could run a command on load. Every file the project reads goes through :func:`load_torch_file`,
which reads with ``weights_only=True`` (tensors, containers and plain values only, what our checkpoints, mean
images and state_dicts hold) unless the user explicitly trusts the file (``trust_checkpoint=true``).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from zfexp.checks import one_of
from zfexp.errors import CheckpointError, UnsafeFileError

TRUST_OPTION = "trust_checkpoint=true"
# How torch.save's pre-1.6 format begins: its magic number, pickled with protocol 2.
_LEGACY_HEAD = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def torch_file_format(path: Path) -> str | None:
    """``"zip"`` (torch.save's format since 1.6, complete enough to list its records), ``"legacy"`` (the
    format before it), or ``None``: not a file torch.save wrote, or one cut short."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "zip" if any(n.endswith("/data.pkl") or n == "data.pkl" for n in archive.namelist()) else None
    except zipfile.BadZipFile:
        pass
    with open(path, "rb") as f:
        return "legacy" if f.read(len(_LEGACY_HEAD)) == _LEGACY_HEAD else None


def require_torch_file(path: Path, key: str, what: str, noun: str = "file written by torch.save") -> str:
    """The format of ``path`` (:func:`torch_file_format`), or a :class:`CheckpointError` naming ``key`` and the
    file when it cannot be read or is not a complete ``noun``; ``what`` says what to give instead."""
    try:
        kind = torch_file_format(path)
    except OSError as err:
        raise CheckpointError(f"{key}={path}: cannot be read ({err}); give {what}") from err
    if kind is None:
        raise CheckpointError(f"{key}={path}: not a complete {noun}: the file is truncated (a copy or a save that was "
                              f"cut short) or was not written by torch.save. Give {what}.")
    return kind


def refused_global(err: BaseException) -> str:
    """What a safe load refused, in torch's words (``unsupported GLOBAL posix.system ...``), for the message."""
    found = re.search(r"(Unsupported global|unsupported GLOBAL)[^\n]*", str(err))
    return found.group(0).rstrip(".") if found else str(err).splitlines()[0]


def trust_option(cfg: Any) -> bool:
    """The run's ``trust_checkpoint``: the user's explicit opt-in to unpickling the files it reads in full."""
    value = cfg.get("trust_checkpoint", False)
    one_of("trust_checkpoint", value, (False, True),
           "false, the default: files are read with torch.load(weights_only=True), tensors and plain values only; "
           "true: files you trust, read in full: they may run code")
    return bool(value)


TRUST_REMEDY = (f"If you trust this file (you wrote it, or know who did), add {TRUST_OPTION} to read it with pickle's "
                "full power.")


def load_torch_file(path: str | Path, key: str, *, trusted: bool = False, mmap: bool = False,
                    what: str = "a checkpoint written by train.py", remedy: str = TRUST_REMEDY) -> Any:
    """``torch.load(path)`` on the CPU with ``weights_only=True``, or ``False`` when the user ``trusted`` the
    file; ``mmap``: map a zip-format file instead of reading it (only what is used is read).

    Raises :class:`UnsafeFileError` when the file holds objects a safe load refuses (its message ends with
    ``remedy``), and :class:`CheckpointError` when it cannot be read at all; both name ``key`` (the config key
    that gave the path) and the file. ``what`` says what the file should be."""
    path = Path(path).expanduser()
    kind = require_torch_file(path, key, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted, mmap=mmap and kind == "zip")
    except Exception as err:  # torch's errors for a damaged archive or tensor data are of several kinds
        if isinstance(err, pickle.UnpicklingError) and not trusted and "weights only load failed" in str(err).lower():
            raise UnsafeFileError(
                f"{key}={path} holds Python objects that a safe load refuses ({refused_global(err)}): opening it "
                f"could run code stored in the file. Files written by this project hold only tensors and plain "
                f"values. {remedy}") from None
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"{key}={path}: the file cannot be read ({type(err).__name__}: {first_line}); give "
                              f"{what}") from err
