"""Checks of single values, each raising an :class:`InvalidValueError` that names the key, the value and what
is valid, in one paragraph. ``key`` is the full config key where the caller knows it
(``callbacks.occlusion_maps.stride``), else the argument's name: a config group then puts its own key in front
(:func:`zfexp.runs.config_groups.instantiate_group`)."""

from __future__ import annotations

from typing import Any

from zfexp.errors import InvalidValueError


def is_int(value: Any) -> bool:
    """An integer, and not a bool (``True`` is an ``int`` to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(key: str, value: Any, null: str | None = None) -> None:
    """``value`` is an integer >= 1; ``null``: what ``None`` means, when it is allowed."""
    if value is None and null is not None:
        return
    if not is_int(value) or value < 1:
        allowed = f", or null ({null})" if null else ""
        raise InvalidValueError(f"{key}={value!r}: must be a positive integer{allowed}")


def positive_number(key: str, value: Any, paper: str | None = None) -> None:
    """``value`` is a real number > 0; ``paper``: the paper's value, said in the message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        said = f" (paper: {paper})" if paper else ""
        raise InvalidValueError(f"{key}={value!r}: must be a positive number{said}")
