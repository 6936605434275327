"""Named failure-handling policies: what a target's calls get (timeouts, retries,
breaker, fallback, bulkhead, tier), and the rules that decide which errors are retried.

A ``Policy`` is configuration only (checked when it is made); ``Resilience``
(``kerna.plugins._resilience``) applies it to the targets that name it.

Retries (the choices, where the issue left room):

- Only errors the policy marks (``Retry(on=...)``): an exception type matches an
  instance of it, and a ``RemoteError`` from a handler that raised exactly that type
  (subclasses are not known across the wire); a name matches a ``RemoteError``'s
  ``type_name`` (the handler's exception, ``module.Qualname``), whole or its last
  dotted part, or the class name of a local error. Errors a retry cannot fix are
  never retried, whatever ``on`` says:
  registration and validation errors (``RegistrationError``, ``UnknownAgent``,
  ``UnhandledMessage``, ``TypeError``, ``ValueError`` and so msgspec's
  ``ValidationError``), ``DeadlockError``, ``UsageError``, ``KernelStopped`` and
  ``CircuitOpen`` (an open breaker fails fast; retrying into it would not); naming one
  of them in ``on`` is a ``ConfigError``.
- Only messages marked idempotent (``@idempotent`` on the message class): a message
  that is not is sent once, whatever the policy (a retry may repeat its effect).
- Backoff: the n-th retry (n = 0, 1, ...) waits a uniformly random time in
  ``[0, min(max_interval, interval * 2**n)]`` (exponential, "full jitter") or
  ``[0, min(max_interval, interval)]`` (constant), on the loop's clock.
- Never past the deadline: a retry whose backoff would end at or after the message's
  deadline is not made (the last error is raised), and each attempt's timeout is the
  policy's ``timeout`` narrowed to the time left.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

from kerna import (
    CircuitOpen,
    ConfigError,
    DeadlockError,
    KernelStopped,
    Message,
    RegistrationError,
    RemoteError,
    UnhandledMessage,
    UnknownAgent,
    UsageError,
)

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._resilience import Failed

__all__ = [
    "NEVER_RETRIED",
    "Policy",
    "Retry",
    "Tier",
    "idempotent",
    "is_idempotent",
    "matches",
    "tier_options",
]

M = TypeVar("M", bound=type[Message])
Tier = Literal["critical", "best_effort"]

_IDEMPOTENT = "__kerna_idempotent__"

NEVER_RETRIED: tuple[type[BaseException], ...] = (
    RegistrationError, UnknownAgent, UnhandledMessage, TypeError, ValueError, DeadlockError,
    UsageError, KernelStopped, CircuitOpen,
)  # fmt: skip
"""Errors a retry cannot fix (a caller's mistake, or a breaker failing fast)."""
_NEVER_NAMES = frozenset(t.__name__ for t in NEVER_RETRIED) | {"ValidationError", "DecodeError"}


class TierOptions(TypedDict):
    """What ``tier_options`` returns: ``Kernel.register`` keyword arguments."""

    overflow: str


def tier_options(tier: Tier) -> TierOptions:
    """The registration options of an agent type of ``tier``::

        kernel.register(Sentiment, **tier_options("best_effort"))

    ``critical``: ``overflow="wait"`` (a full mailbox makes senders wait: nothing is
    lost); ``best_effort``: ``overflow="drop_oldest"`` (a tell to it never waits, so a
    critical sender is never held by a backed-up best-effort agent; what is pushed out
    is counted and dead-lettered). Pair a best-effort type with a best-effort
    ``Policy`` (a timeout and a fallback) for the asks to it.

    Raises:
        ConfigError: not a tier.
    """
    if tier == "critical":
        return {"overflow": "wait"}
    if tier == "best_effort":
        return {"overflow": "drop_oldest"}
    raise ConfigError(f"tier must be 'critical' or 'best_effort', got {tier!r}")


def idempotent(cls: M) -> M:
    """Class decorator: messages of this type may be sent more than once (retries).

    Raises:
        TypeError: ``cls`` is not a kerna Message class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        raise TypeError(f"@idempotent decorates kerna.Message classes, not {cls!r}")
    type.__setattr__(cls, _IDEMPOTENT, True)
    return cls


def is_idempotent(message: object) -> bool:
    """Whether ``message``'s class is marked ``@idempotent``."""
    return bool(getattr(type(message), _IDEMPOTENT, False))


def _names(error: BaseException) -> tuple[str, ...]:
    if isinstance(error, RemoteError):
        return (error.type_name, error.type_name.rpartition(".")[2])
    return (type(error).__name__, type(error).__qualname__)


def never_retried(error: BaseException) -> bool:
    """Whether ``error`` is one a retry or a fallback must not paper over."""
    if isinstance(error, NEVER_RETRIED):
        return True
    return isinstance(error, RemoteError) and bool(_NEVER_NAMES.intersection(_names(error)))


def matches(error: BaseException, on: Sequence[type[BaseException] | str]) -> bool:
    """Whether ``error`` is one of ``on`` (types by instance, names by type name)."""
    names = _names(error)
    for entry in on:
        if isinstance(entry, str):
            if entry in names:
                return True
        elif isinstance(error, entry) or (
            isinstance(error, RemoteError) and error.type_name in _type_names(entry)
        ):
            return True
    return False


def _type_names(cls: type) -> tuple[str, str]:
    """How ``RemoteError.type_name`` names an exception of ``cls`` (``kerna._failures``)."""
    return (cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}")


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not (value > 0 or (allow_zero and value == 0)) or value == float("inf"):
        raise ConfigError(f"{name} must be > 0 and finite, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class Retry:
    """Retries of a policy (see the module docstring for the rules).

    Attributes:
        on: the errors to retry: exception types and/or type names (required).
        max_retries: retries after the first attempt (5: at most 6 attempts).
        backoff: ``"exponential"`` (the default) or ``"constant"``.
        interval: the base interval in seconds (the first retry's envelope).
        max_interval: the cap of the envelope, in seconds.
        rng: the random source of the jitter (a ``random.Random``; tests seed one).

    Raises:
        ConfigError: an option is out of range, ``on`` is empty or names an error that
            is never retried.
    """

    on: tuple[type[BaseException] | str, ...]
    max_retries: int = 3
    backoff: Literal["exponential", "constant"] = "exponential"
    interval: float = 0.1
    max_interval: float = 10.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ConfigError(f"Retry max_retries must be an int >= 0, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ConfigError(f"Retry max_retries must be an int >= 0, got {self.max_retries!r}")
        if self.backoff not in ("exponential", "constant"):
            raise ConfigError(
                f"Retry backoff must be 'exponential' or 'constant', got {self.backoff!r}"
            )
        _seconds("Retry interval", self.interval)
        _seconds("Retry max_interval", self.max_interval)
        on: Any = self.on  # checked: a user may pass anything
        if isinstance(on, str | type) or not on:
            raise ConfigError(
                f"Retry on= must be a non-empty tuple of exception types or names, got {on!r}"
            )
        for entry in on:
            if isinstance(entry, str):
                if entry.rpartition(".")[2] in _NEVER_NAMES:
                    raise ConfigError(f"Retry on=: {entry!r} is never retried (a caller error)")
            elif isinstance(entry, type) and issubclass(entry, BaseException):
                if issubclass(entry, NEVER_RETRIED):
                    raise ConfigError(
                        f"Retry on=: {entry.__qualname__} is never retried (a caller error, "
                        "or a breaker failing fast)"
                    )
            else:
                raise ConfigError(f"Retry on=: {entry!r} is neither an exception type nor a name")
        object.__setattr__(self, "on", tuple(on))

    def envelope(self, n: int) -> float:
        """The upper bound of the n-th retry's delay (n = 0 for the first retry)."""
        if self.backoff == "constant":
            return min(self.max_interval, self.interval)
        return min(self.max_interval, self.interval * 2.0 ** min(n, 64))

    def delay(self, n: int) -> float:
        """The n-th retry's delay: uniform in ``[0, envelope(n)]`` (full jitter)."""
        return self.rng.uniform(0.0, self.envelope(n))

    def retries(self, error: BaseException) -> bool:
        """Whether ``error`` is retried under this policy."""
        return not never_retried(error) and matches(error, self.on)


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A named set of failure handling for the targets that name it.

    Attributes:
        timeout: seconds per attempt (narrowed to the message's time left); None: the
            message's own deadline only.
        retry: a ``Retry``, or None (one attempt).
        breaker: a ``Breaker`` (one per target that names the policy), or None.
        fallback: ``async def fallback(failed: Failed) -> reply``: used when the
            breaker is open, the call timed out or it failed (after its retries); not
            for caller errors (``never_retried``, ``CircuitOpen`` aside). Its result
            is the caller's reply, and the conversation is marked degraded.
        bulkhead: at most this many calls to the target at once (per target); more
            callers wait for a slot within their deadline. None: no limit.
        tier: ``"critical"`` (the default) or ``"best_effort"``: a best-effort target
            needs a fallback and a timeout (it never holds a critical caller longer),
            and breaker openings of a critical one are logged as errors.

    Raises:
        ConfigError: an option is out of range, or a best-effort policy lacks a
            fallback or a timeout.
    """

    timeout: float | None = None
    retry: Retry | None = None
    breaker: Breaker | None = None
    fallback: Callable[[Failed], Awaitable[Any]] | None = None
    bulkhead: int | None = None
    tier: Tier = "critical"

    def __post_init__(self) -> None:
        if self.timeout is not None:
            _seconds("Policy timeout", self.timeout)
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise ConfigError(f"Policy retry must be a Retry, got {self.retry!r}")
        from ._breaker import Breaker

        if self.breaker is not None and not isinstance(self.breaker, Breaker):
            raise ConfigError(f"Policy breaker must be a Breaker, got {self.breaker!r}")
        if self.fallback is not None and not callable(self.fallback):
            raise ConfigError(f"Policy fallback must be an async callable, got {self.fallback!r}")
        bulkhead = self.bulkhead
        if bulkhead is not None and (
            isinstance(bulkhead, bool) or not isinstance(bulkhead, int) or bulkhead < 1
        ):
            raise ConfigError(f"Policy bulkhead must be an int >= 1 or None, got {bulkhead!r}")
        if self.tier not in ("critical", "best_effort"):
            raise ConfigError(f"Policy tier must be 'critical' or 'best_effort', got {self.tier!r}")
        if self.tier == "best_effort" and (self.fallback is None or self.timeout is None):
            raise ConfigError(
                "a best_effort policy needs a fallback and a timeout: it degrades instead "
                "of failing or holding its caller"
            )
