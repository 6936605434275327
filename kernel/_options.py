"""Validation of kernel and registration options: one clear ValueError per bad value."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ._registry import OVERFLOW_POLICIES

__all__ = [
    "WrongType",
    "check_headers",
    "check_mailbox",
    "check_positive",
    "check_restarts",
    "check_seconds",
    "check_timeout",
]


class WrongType(TypeError, ValueError):
    """An option or argument of the wrong type: a ``TypeError`` (what it is), and a
    ``ValueError`` too, which is what kerna raised for any bad option before."""


def _number(name: str, value: object, what: str) -> float:
    """``value`` as a number, or a TypeError naming the option (``"1"`` and ``True``
    are not numbers of seconds)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WrongType(f"{name} must be {what}, got {value!r} ({type(value).__qualname__})")
    return value


def check_positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    """A positive, finite number (a timeout, a TTL).

    Raises:
        TypeError: not a number.
        ValueError: not positive or not finite.
    """
    if value is None and allow_none:
        return
    number = _number(name, value, "a positive number" + (" or None" if allow_none else ""))
    if not number > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_seconds(name: str, value: object) -> None:
    """A duration that may be 0 (a grace period, a backoff).

    Raises:
        TypeError: not a number.
        ValueError: negative or not finite.
    """
    number = _number(name, value, "a number of seconds >= 0")
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")


def check_mailbox(capacity: int, overflow: str) -> None:
    """A mailbox capacity and overflow policy.

    Raises:
        TypeError: the capacity is not an int, or the policy not a str.
        ValueError: the capacity is below 1, or the policy unknown.
    """
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise WrongType(
            f"mailbox_size must be an int >= 1, got {capacity!r} ({type(capacity).__qualname__})"
        )
    if capacity < 1:
        raise ValueError(f"mailbox_size must be an int >= 1, got {capacity!r}")
    if not isinstance(overflow, str):
        raise WrongType(f"overflow must be a str, got {overflow!r}")
    if overflow not in OVERFLOW_POLICIES:
        policies = ", ".join(OVERFLOW_POLICIES)
        raise ValueError(f"overflow must be one of {policies}; got {overflow!r}")


def check_restarts(max_restarts: int, backoff: float) -> None:
    """A restart budget and the first backoff.

    Raises:
        TypeError: ``max_restarts`` is not an int, or ``backoff`` not a number.
        ValueError: either is negative.
    """
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int):
        raise WrongType(
            f"max_restarts must be an int >= 0, got {max_restarts!r}"
            f" ({type(max_restarts).__qualname__})"
        )
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
    check_seconds("restart_backoff", backoff)


def check_timeout(timeout: object, what: str = "ask timeout") -> None:
    """A timeout (``what`` names it in the error): a positive, finite number of seconds.

    Raises:
        TypeError: not a number (``"1"``, ``True``).
        ValueError: not positive or not finite.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise WrongType(
            f"{what} must be a number of seconds, got {timeout!r} ({type(timeout).__qualname__})"
        )
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"{what} must be a positive number of seconds, got {timeout!r}")


def check_headers(headers: object) -> dict[str, str]:
    """Message headers: a mapping of str to str, copied (the envelope's is never shared
    with the caller, who may change theirs).

    Raises:
        TypeError: not a mapping, or a key or value is not a str.
    """
    if not isinstance(headers, Mapping):
        raise WrongType(f"headers must be a mapping of str to str, got {headers!r}")
    copied = dict(headers)
    for name, value in copied.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise WrongType(f"headers must map str to str, got {name!r}: {value!r}")
    return copied
