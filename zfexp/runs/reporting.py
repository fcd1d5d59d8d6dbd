"""How the entry points end on a user's mistake: the message alone, in one paragraph, and a non-zero exit.

A traceback helps with a bug in the code, not with a wrong value on the command line, a missing file or a
diverged loss: for those (:class:`zfexp.errors.UserError`, Lightning's configuration errors, a mandatory config
value left unset) Hydra prints only the message. ``HYDRA_FULL_ERROR=1`` brings the full traceback back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from hydra.errors import CompactHydraException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import MissingMandatoryValue

from zfexp.errors import UserError


class ReportedError(CompactHydraException):
    """Raised by an entry point with the user's message: Hydra prints it without a traceback."""


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or during, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _without_worker_traceback(err: BaseException) -> str:
    """The message of ``err``; for an error re-raised from a DataLoader worker (its message then holds the
    worker's whole traceback), the original message only."""
    message = str(err)
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    for header in (f"{type(err).__module__}.{type(err).__qualname__}: ", f"{type(err).__name__}: "):
        at = message.rfind("\n" + header)
        if at >= 0:
            return message[at + 1 + len(header):].strip()
    return message


def user_message(err: BaseException) -> str | None:
    """The paragraph to show for ``err`` when it (or what it was raised from) is a user's mistake; else None."""
    for cause in _causes(err):
        if isinstance(cause, UserError):
            return _without_worker_traceback(cause)
        if isinstance(cause, MisconfigurationException):
            return f"trainer: {cause}"
        if isinstance(cause, MissingMandatoryValue):
            key = cause.full_key or "a config value"
            return f"{key} is required and has no value (??? in the config): give it on the command line, {key}=..."
    return None


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Around an entry point's work: a user's mistake leaves as a :class:`ReportedError` with its message (Hydra
    adds how to see the traceback); anything else, and everything under ``HYDRA_FULL_ERROR=1``, as it was."""
    try:
        yield
    except Exception as err:
        message = user_message(err)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise ReportedError(f"Error: {message}") from None  # Hydra would print an OmegaConf cause too


@contextlib.contextmanager
def reported_exit() -> Iterator[None]:
    """The same for an entry point that Hydra does not run (``zfexp.sweep_results.summarize``): the paragraph on
    stderr and exit status 1 instead of a traceback."""
    try:
        with reported_errors():
            yield
    except ReportedError as err:
        raise SystemExit(str(err)) from None
