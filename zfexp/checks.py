"""Checks of single values, each raising an :class:`InvalidValueError` that names the key, the value and what
is valid, in one paragraph. ``key`` is the full config key where the caller knows it
(``callbacks.occlusion_maps.stride``), else the argument's name: a config group then puts its own key in front
(:func:`zfexp.runs.config_groups.instantiate_group`).

Every check of a single value goes through here (checks of how values fit together stay beside what they
concern: ``zfexp.config_checks``, the datamodules, ``zfexp.models.zfnet``), so that a bool is never taken for
a count (``True`` is an ``int`` to Python) and every message has the same form: ``<key>=<value>: must be
<what is valid>``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from zfexp.errors import InvalidValueError


def is_int(value: Any) -> bool:
    """An integer, and not a bool (``True`` is an ``int`` to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (int or float), and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _or_null(null: str | None) -> str:
    return f", or null ({null})" if null else ""


def integer(key: str, value: Any, low: int | None = None, high: int | None = None, null: str | None = None,
            unit: str = "") -> None:
    """``value`` is an integer in ``low..high`` (either bound may be open); ``null``: what ``None`` means, when
    it is allowed; ``unit``: what the integer counts (``"pixels"``), said in the message."""
    if value is None and null is not None:
        return
    if is_int(value) and (low is None or value >= low) and (high is None or value <= high):
        return
    if low == 1 and high is None:
        what = "a positive integer"
    elif low == 0 and high is None:
        what = "an integer, 0 or more"
    elif low is not None and high is not None:
        what = f"an integer in {low}..{high}"
    else:
        what = "an integer" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
    raise InvalidValueError(f"{key}={value!r}: must be {what}{f' ({unit})' if unit else ''}{_or_null(null)}")


def positive_int(key: str, value: Any, null: str | None = None, unit: str = "") -> None:
    """``value`` is an integer >= 1; ``null``: what ``None`` means, when it is allowed."""
    integer(key, value, low=1, null=null, unit=unit)


def positive_number(key: str, value: Any, paper: str | None = None) -> None:
    """``value`` is a real number > 0; ``paper``: the paper's value, said in the message."""
    if not is_number(value) or not value > 0:
        said = f" (paper: {paper})" if paper else ""
        raise InvalidValueError(f"{key}={value!r}: must be a positive number{said}")


def number_in(key: str, value: Any, low: float, high: float, high_included: bool = False) -> None:
    """``value`` is a real number in ``[low, high)`` (``[low, high]`` with ``high_included``)."""
    if is_number(value) and low <= value and (value <= high if high_included else value < high):
        return
    raise InvalidValueError(f"{key}={value!r}: must be in [{low}, {high}{']' if high_included else ')'}")


def one_of(key: str, value: Any, valid: Iterable[Any], explain: str = "") -> None:
    """``value`` is one of ``valid``; ``explain``: what the choices mean, after the list."""
    valid = list(valid)
    if value in valid and not (isinstance(value, bool) and not any(isinstance(v, bool) for v in valid)):
        return
    names = ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in valid)
    raise InvalidValueError(f"{key}={value!r}; valid: {names}{f' ({explain})' if explain else ''}")
