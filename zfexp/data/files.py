"""Files written so that no reader ever sees half of one, and readable by the other users of a shared tree."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file of this process beside ``path``, then rename it to ``path``.

    Readers never see half a file, and jobs of a parallel sweep that prepare the same file at once (each
    extracting the dataset or caching the mean image) each write their own temporary file: the last rename
    wins with a complete file. The file gets the permissions of any new file (0666 less the umask), not
    ``mkstemp``'s 0600: a tree prepared or a cache written by one user is readable by the others.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
