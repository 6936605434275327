"""Timers: messages an agent schedules to itself, once or periodically.

A timer belongs to its activation and dies with it. Durable reminders, which survive
deactivation and restarts, come with state.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._activation import Activation
    from ._message import Message

__all__ = ["Timer"]


class Timer:
    """Handle of a scheduled self-message; ``cancel()`` stops it."""

    __slots__ = (
        "_activation", "_handle", "_message", "cancelled", "headers", "interval", "repeat",
    )  # fmt: skip

    def __init__(self, activation: Activation, delay: float, message: Message, repeat: bool):
        self._activation = activation
        self._message = message
        self.interval = delay
        self.repeat = repeat
        self.cancelled = False
        # A tick is a root (a conversation of its own), but it carries the headers of the
        # message whose handler started the timer, so tracing and the like continue.
        current = activation.current
        self.headers = None if current is None else current.headers
        loop = activation.runtime.loop
        self._handle: asyncio.TimerHandle = loop.call_at(loop.time() + delay, self._fire)

    def _fire(self) -> None:
        activation = self._activation
        if self.repeat:
            # Fixed rate from the planned time, so ticks do not drift with handler time.
            loop = activation.runtime.loop
            self._handle = loop.call_at(self._handle.when() + self.interval, self._fire)
        else:
            self.cancelled = True
            if activation.timers is not None:
                activation.timers.discard(self)
        activation.deliver_tick(self, self._message)

    def cancel(self) -> None:
        """Stop the timer; a tick already delivered is still handled."""
        if not self.cancelled:
            self.cancelled = True
            self._handle.cancel()
        timers = self._activation.timers
        if timers is not None:
            timers.discard(self)
