"""Log records carry the agent and the conversation they were made in (Akka's MDC).

Importing ``kerna.Kernel`` installs a log record factory (``logging.setLogRecordFactory``)
around the one in place, and making a ``Kernel`` installs it again if another factory
replaced it without wrapping it. Every ``LogRecord`` made afterwards, by any logger,
gets two attributes:

- ``agent_id``: the agent whose worker made the record (``"Type/key"``), else None;
- ``correlation_id``: the conversation of the message that agent is handling (the int
  ``self.context.correlation_id`` reads), else None.

So a record logged in a handler, in the handler of a timer's tick, in a handler that
answers a deferred reply, or by kerna itself about that message (a handler's failure)
carries the message's correlation id, whichever handler, formatter or thread formats it
later (a ``QueueHandler`` too): ``%(correlation_id)s`` works in any format string and
reads ``None`` outside any agent, as ``agent_id`` does (``on_start``/``on_stop`` have
an agent and no message). A task started from a handler (``Kernel.create_task``,
``asyncio.create_task``) reads the agent's message at the time of the record, as its
sends do. Because logging refuses ``extra=`` keys that a record already has, pass a
correlation id of your own under another name (``extra={"order_correlation": ...}``).

Nothing happens per message: the factory reads the worker's ``current_activation``
when a record is made, and records are only made for enabled levels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ._activation import current_activation

__all__ = ["install_log_context"]


class _Factory:
    """The record factory: ``previous``'s record, with the two attributes."""

    __slots__ = ("previous",)

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        act = current_activation.get()
        if act is None:
            record.agent_id = record.correlation_id = None
        else:
            record.agent_id = str(act.id)
            env = act.current
            record.correlation_id = None if env is None else env.correlation_id
        return record


def install_log_context() -> None:
    """Wrap the process's log record factory so records carry ``agent_id`` and
    ``correlation_id`` (see the module docstring); once per process (a factory
    installed later that wraps this one keeps it)."""
    if not isinstance(logging.getLogRecordFactory(), _Factory):
        logging.setLogRecordFactory(_Factory(logging.getLogRecordFactory()))
