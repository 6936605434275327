"""Circuit breakers: pybreaker's state machine, driven from asyncio on the loop's clock.

pybreaker's own async support is Tornado's. Here a call is two steps on the event
loop's thread, with no lock held across its ``await``: admission (closed: go; open:
``CircuitOpen`` until the reset timeout has passed, then pybreaker's own
``half_open()``), then, once the awaited call is over, its outcome is replayed through
pybreaker's ``CircuitBreaker.call`` (a function that raises the call's error, or
returns), so pybreaker's state machine counts it: consecutive failures, opening at
``fail_max``, closing after ``success_threshold`` half-open successes, its listeners.
A cancelled call, or one that failed by the caller's own mistake
(``kerna.plugins._policy.never_retried``), is not replayed: it says nothing about the
target. Two things pybreaker leaves to its caller are done here:

- Time: the reset timeout runs on ``loop.time()`` (a ``VirtualClock`` moves it).
  Admission checks it; pybreaker's own check (``datetime.now()`` against the
  storage's ``opened_at``, reached when an outcome is replayed while open) agrees,
  as the storage here keeps the loop time it opened at and reports ``opened_at`` as
  "now minus the loop time elapsed since".
- Half-open admits exactly ``probes`` calls: pybreaker lets every call through while
  half-open (its lock only serialises synchronous calls); callers beyond the probes in
  flight fail fast with ``CircuitOpen``, like callers while open. ``probes``
  successes close the breaker (pybreaker's ``success_threshold``), one failure opens
  it again.

State changes are logged, counted (``BreakerStats``) and handed to a listener (the
``Resilience`` publishes them as ``BreakerChanged`` events).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from kerna import CircuitOpen, ConfigError

from ._policy import never_retried

__all__ = ["Breaker", "BreakerState", "BreakerStats"]


@dataclass(frozen=True, kw_only=True)
class Breaker:
    """A circuit breaker's options (one breaker per target naming the policy).

    Attributes:
        failures: consecutive failures that open it.
        reset_timeout: seconds it stays open before admitting probes (half-open).
        probes: calls admitted at once while half-open; that many successes close it.

    Raises:
        ConfigError: an option is out of range.
    """

    failures: int = 5
    reset_timeout: float = 30.0
    probes: int = 1

    def __post_init__(self) -> None:
        for name in ("failures", "probes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Breaker {name} must be an int >= 1, got {value!r}")
        timeout = self.reset_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"Breaker reset_timeout must be seconds > 0, got {timeout!r}")


class BreakerStats(msgspec.Struct, frozen=True):
    """One breaker's state and counters (``Resilience.breaker_stats``).

    Attributes:
        state: ``"closed"``, ``"open"`` or ``"half-open"``.
        failures: failures counted since the last success (what opens it).
        calls: calls let through (probes included).
        rejected: calls failed fast with ``CircuitOpen``.
        opened: times it opened.
        half_opened: times it went half-open.
        closed: times it closed again.
    """

    state: str
    failures: int
    calls: int
    rejected: int
    opened: int
    half_opened: int
    closed: int


def _storage_class() -> type[Any]:
    import pybreaker

    closed = pybreaker.STATE_CLOSED

    class LoopStorage(pybreaker.CircuitMemoryStorage):
        """pybreaker's memory storage with ``opened_at`` on the loop's clock, and
        ``clean``: closed with no failure counted (a plain attribute: what a call
        through a healthy breaker reads, without pybreaker's properties)."""

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.clean = True
            super().__init__(closed)
            self.loop = loop
            self.opened_loop_time: float | None = None

        @property
        def state(self) -> str:
            return self._state

        @state.setter
        def state(self, state: str) -> None:
            self._state = state
            self.clean = state == closed and self._fail_counter == 0

        def increment_counter(self) -> None:
            super().increment_counter()
            self.clean = False

        def reset_counter(self) -> None:
            super().reset_counter()
            self.clean = self._state == closed

        @property
        def opened_at(self) -> datetime | None:
            if self.opened_loop_time is None:
                return None
            elapsed = self.loop.time() - self.opened_loop_time
            return datetime.now(UTC) - timedelta(seconds=elapsed)

        @opened_at.setter
        def opened_at(self, value: datetime) -> None:
            self.opened_loop_time = self.loop.time()

    return LoopStorage


class BreakerState:
    """The breaker of one target: pybreaker's ``CircuitBreaker`` and the probes."""

    def __init__(
        self,
        name: str,
        options: Breaker,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[str, str, str], None],
    ) -> None:
        import pybreaker

        self.name = name
        self.options = options
        self.loop = loop
        self.storage = _storage_class()(loop)
        on = self._changed

        class Listener(pybreaker.CircuitBreakerListener):
            def state_change(
                self,
                cb: pybreaker.CircuitBreaker,
                old_state: pybreaker.CircuitBreakerState | None,
                new_state: pybreaker.CircuitBreakerState,
            ) -> None:
                on("closed" if old_state is None else old_state.name, new_state.name)

        self.breaker = pybreaker.CircuitBreaker(
            fail_max=options.failures,
            reset_timeout=options.reset_timeout,
            success_threshold=options.probes,
            state_storage=self.storage,
            throw_new_error_on_trip=False,  # the call's own error reaches its caller
            listeners=[Listener()],
            name=name,
        )
        self.on_change = on_change
        self.probing = 0
        self.calls = 0
        self.rejected = 0
        self.opened = 0
        self.half_opened = 0
        self.closed = 0

    def _changed(self, old: str, new: str) -> None:
        if new == "open":
            self.opened += 1
        elif new == "half-open":
            self.half_opened += 1
        else:
            self.closed += 1
        self.on_change(self.name, old, new)

    def admit(self) -> bool:
        """Admit a call (True: it is a half-open probe; pass it to ``done``).

        Raises:
            CircuitOpen: the breaker is open, or half-open with every probe taken.
        """
        storage = self.storage
        if storage.clean:  # closed, no failure counted: the usual case
            self.calls += 1
            return False
        state = storage.state
        if state == "open":
            opened = self.storage.opened_loop_time
            if opened is not None and self.loop.time() - opened < self.options.reset_timeout:
                raise self._reject("open")
            self.breaker.half_open()
            state = "half-open"
        probe: bool = state == "half-open"
        if probe:
            if self.probing >= self.options.probes:
                raise self._reject("half-open, its probes in flight")
            self.probing += 1
        self.calls += 1
        return probe

    def done(self, probe: bool, error: BaseException | None) -> None:
        """Record an admitted call's outcome (``error`` None: it succeeded)."""
        if probe:
            self.probing -= 1
        elif error is None and self.storage.clean:
            return  # pybreaker would reset a zero count and call its listeners, whose only
            # one here (ours) hears state changes only: nothing to do
        if error is not None and (
            isinstance(error, asyncio.CancelledError) or never_retried(error)
        ):
            return  # says nothing about the target's health

        import pybreaker  # (past the early returns: not on a closed breaker's hot path)

        def replay() -> None:
            if error is not None:
                raise error

        try:
            self.breaker.call(replay)
        except pybreaker.CircuitBreakerError:
            pass  # opened again meanwhile (another probe failed): nothing to count
        except BaseException as exc:
            if exc is not error:
                raise

    def _reject(self, why: str) -> CircuitOpen:
        self.rejected += 1
        return CircuitOpen(f"circuit breaker of {self.name} is {why}: the call was not made")

    def stats(self) -> BreakerStats:
        return BreakerStats(
            state=self.breaker.current_state,
            failures=self.breaker.fail_counter,
            calls=self.calls,
            rejected=self.rejected,
            opened=self.opened,
            half_opened=self.half_opened,
            closed=self.closed,
        )
