"""Errors with messages meant for the user: each names the bad value or file and what would be valid.

Every one of them is a :class:`UserError`; the entry points (``train.py``, ``zfexp.analyze``,
``zfexp.features``, ``zfexp.sweep_results.summarize``) end on one with its message alone (see
:func:`zfexp.runs.reporting.reported_errors`).
"""


class UserError(Exception):
    """Something the user gave (a config value, a file, the data) or the run itself (a diverged loss) is wrong,
    and the message says what and how to fix it: a traceback would add nothing."""


class InvalidValueError(UserError, ValueError):
    """A value (a config key, an argument) is not valid; the message names it and what is valid."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are missing or unreadable; the message says which and how to get them."""


class CorruptImageError(UserError, OSError):
    """An image file cannot be decoded; the message names the file."""


class CheckpointError(UserError, FileNotFoundError):
    """A checkpoint path names no file, or a file that is not (or no longer) a complete checkpoint."""


class UnsafeFileError(CheckpointError):
    """A file holds objects that ``torch.load(weights_only=True)`` refuses: reading it could run code."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the checkpoint to resume from."""


class MissingExtraError(UserError):
    """A choice whose package is not installed: a launcher preset's extra ([ray], [slurm]) or DALI's ([dali])."""


class SweepDirError(UserError, FileNotFoundError):
    """A sweep directory to summarise is missing, holds no job, or no job of it completed; the message names it."""
