"""Errors with messages meant for the user: each names the bad value or file and what would be valid."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or unreadable; the message says which and how to get them."""


class CorruptImageError(OSError):
    """An image file cannot be decoded; the message names the file."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""
