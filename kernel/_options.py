"""Validation of kernel and registration options: one clear ValueError per bad value."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ._registry import OVERFLOW_POLICIES

__all__ = [
    "check_headers",
    "check_mailbox",
    "check_positive",
    "check_restarts",
    "check_seconds",
    "check_timeout",
]


def check_positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_seconds(name: str, value: object) -> None:
    """A duration that may be 0 (a grace period, a backoff)."""
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and value >= 0 and math.isfinite(value)
    ):
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")


def check_mailbox(capacity: int, overflow: str) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"mailbox_size must be an int >= 1, got {capacity!r}")
    if overflow not in OVERFLOW_POLICIES:
        policies = ", ".join(OVERFLOW_POLICIES)
        raise ValueError(f"overflow must be one of {policies}; got {overflow!r}")


def check_restarts(max_restarts: int, backoff: float) -> None:
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
    check_seconds("restart_backoff", backoff)


def check_timeout(timeout: object) -> None:
    """An ask timeout: a positive, finite number of seconds.

    Raises:
        TypeError: not a number (``"1"``, ``True``).
        ValueError: not positive or not finite.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"ask timeout must be a number of seconds, got {timeout!r} "
            f"({type(timeout).__qualname__})"
        )
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"ask timeout must be a positive number of seconds, got {timeout!r}")


def check_headers(headers: object) -> dict[str, str]:
    """Message headers: a mapping of str to str, copied (the envelope's is never shared
    with the caller, who may change theirs).

    Raises:
        TypeError: not a mapping, or a key or value is not a str.
    """
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, got {headers!r}")
    copied = dict(headers)
    for name, value in copied.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"headers must map str to str, got {name!r}: {value!r}")
    return copied
