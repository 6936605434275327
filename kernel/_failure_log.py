"""Logging handler failures nobody else hears of (tells and events), rate-limited.

A failed ask reaches its asker as ``RemoteError``; a failed tell or event has no one to
tell, so it becomes a dead letter and a log record on ``kerna.activation`` at
``failure_log_level`` (WARNING by default) with the agent id, the message type, the
correlation id and the exception, in the text and as record attributes for
structured logging (``agent_id``: ``"Type/key"``, ``message_type``: the class name,
``correlation_id``: the int, printed in decimal as everywhere else). So that a poison
stream cannot flood the log, each agent type logs at most ``BURST`` records per
``WINDOW`` seconds; the first record of the next window says how many were left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._envelope import EVENT
from ._failures import describe
from ._options import WrongType

if TYPE_CHECKING:
    import asyncio

    from ._envelope import Envelope
    from ._ids import AgentId

__all__ = ["BURST", "WINDOW", "FailureLog", "LogBudget", "check_level"]

log = logging.getLogger("kerna.activation")

BURST = 10  # records per agent type per window
WINDOW = 60.0  # seconds


def check_level(level: object) -> int:
    """A logging level given as an int or a name (``"WARNING"``, any case).

    Raises:
        ValueError: not a known level name, or a negative int.
        TypeError: neither an int nor a str (also a ValueError, as for every option).
    """
    expected = "a logging level (an int or a name such as 'WARNING')"
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if isinstance(number, int):
            return number
    elif isinstance(level, bool) or not isinstance(level, int):
        raise WrongType(
            f"failure_log_level must be {expected}, got {level!r} ({type(level).__qualname__})"
        )
    elif level >= 0:
        return level
    raise ValueError(f"failure_log_level must be {expected}, got {level!r}")


class LogBudget:
    """At most ``BURST`` records per key per ``WINDOW`` seconds, and how many were left
    out: what keeps a poison stream (or a hostile peer) from flooding the log."""

    __slots__ = ("_clock", "_windows")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: dict[str, list[float]] = {}  # key -> [window start, logged, skipped]

    def allow(self, key: str) -> int | None:
        """None: leave this record out; else log it, and the int is how many records
        of ``key`` were left out in its previous window."""
        now = self._clock()
        window = self._windows.get(key)
        skipped = 0
        if window is None or now - window[0] >= WINDOW:
            skipped = 0 if window is None else int(window[2])
            window = self._windows[key] = [now, 0, 0]
        if window[1] >= BURST:
            window[2] += 1
            return None
        window[1] += 1
        return skipped


class FailureLog:
    """Per agent type, the failures of tells and events, under a ``LogBudget``."""

    __slots__ = ("_budget", "level")

    def __init__(self, level: int, loop: asyncio.AbstractEventLoop) -> None:
        self.level = level
        self._budget = LogBudget(loop.time)

    def handler_failed(self, agent: AgentId, env: Envelope, error: BaseException) -> None:
        """Log that ``agent``'s handler raised ``error`` on the tell or event ``env``."""
        if not log.isEnabledFor(self.level):
            return
        skipped = self._budget.allow(agent.type)
        if skipped is None:
            return
        note = (
            f" ({skipped} earlier failures of {agent.type} were not logged:"
            f" at most {BURST} per {WINDOW:g}s)"
            if skipped
            else ""
        )
        kind = "event" if env.kind == EVENT else "tell"
        message_type = type(env.payload).__qualname__
        # Made by hand, not log.log(extra=): the record factory (kerna._log_context)
        # already set agent_id and correlation_id, which logging refuses to overwrite
        # from extra; they are set to this message's whatever context this runs in.
        fn, lno, func, _ = log.findCaller()
        record = log.makeRecord(
            log.name,
            self.level,
            fn,
            lno,
            "%s: handler failed on %s %s (correlation %d): %s%s",
            (agent, kind, message_type, env.correlation_id, describe(error), note),
            (type(error), error, error.__traceback__),
            func,
            {"message_type": message_type},
        )
        record.agent_id = str(agent)
        record.correlation_id = env.correlation_id
        log.handle(record)
