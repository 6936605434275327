"""Deferred replies: an ask handler takes its reply along and answers later.

``pending = self.defer_reply()`` detaches the reply from the worker: the handler returns
(its return value ignored), the agent handles other messages, and some later handler
calls ``pending.reply(value)`` or ``pending.fail(error)``. The asker waits as for any
ask, bounded by its own deadline (a reply never sent fails it with ``AskTimeout``).

A ``PendingReply`` answers through the same reply channel as the worker does (today the
asker's future; with the transports, the route back to the asking node), so agent code
does not change when the asker is on another node.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._context import MessageContext
from ._errors import RemoteError, UsageError
from ._failures import remote_error

if TYPE_CHECKING:
    from ._activation import Activation
    from ._envelope import Envelope

__all__ = ["PendingReply"]


class PendingReply:
    """A reply to an ask, to be sent later (``Agent.defer_reply``)."""

    __slots__ = ("_activation", "_envelope", "_future", "_sent", "_withdrawn")

    def __init__(
        self, activation: Activation, envelope: Envelope, future: asyncio.Future[Any]
    ) -> None:
        self._activation = activation
        self._envelope = envelope
        self._future = future
        self._sent = False
        self._withdrawn = False
        # Once nobody waits (the asker timed out or gave up), this reply no longer keeps
        # its agent from going idle (``IdleCollector`` spares agents with replies to send).
        future.add_done_callback(self._forget)

    def __repr__(self) -> str:
        state = "sent" if self._sent else "pending"
        asker = self._envelope.sender or "outside"
        return f"<PendingReply to {asker} from {self._activation.id} {state}>"

    @property
    def context(self) -> MessageContext:
        """The ask this replies to, as its handler saw it (``self.context``): the asker
        (``sender``), the ids, the headers, and ``time_left()`` until its deadline."""
        return MessageContext(self._envelope, self._activation.runtime.loop)

    @property
    def sent(self) -> bool:
        """True once ``reply`` or ``fail`` was called (or stop failed it)."""
        return self._sent

    @property
    def expired(self) -> bool:
        """True when nobody waits for this reply any more (the asker timed out or
        gave up): sending it is allowed, and counted as a late reply."""
        return self._future.done()

    def over(self) -> asyncio.Future[None]:
        """A future resolved (with None) once nobody waits for this reply any more: it
        was sent or failed, or the asker gave up. Cancelling it changes nothing else."""
        over: asyncio.Future[None] = self._activation.runtime.loop.create_future()

        def resolve(_: asyncio.Future[Any]) -> None:
            if not over.done():
                over.set_result(None)

        self._future.add_done_callback(resolve)
        return over

    def reply(self, value: Any) -> None:
        """Send ``value`` to the asker.

        Raises:
            UsageError: a reply (or failure) was already sent.
        """
        self._settle()
        future = self._future
        if future.done():
            self._activation.atype.stats.late_replies += 1
        else:
            future.set_result(value)

    def fail(self, error: BaseException) -> None:
        """Fail the ask: the asker gets ``RemoteError`` carrying ``error``, as if the
        handler had raised it.

        Raises:
            UsageError: a reply (or failure) was already sent.
            TypeError: ``error`` is not an exception.
        """
        if not isinstance(error, BaseException):
            raise TypeError(f"fail() takes an exception, got {error!r}")
        self._settle()
        future = self._future
        if future.done():
            self._activation.atype.stats.late_replies += 1
        else:
            future.set_exception(remote_error(error, RemoteError, self._activation.node_id()))

    def abandon(self, error: Exception) -> None:
        """The activation ends before this was sent: the asker gets ``error`` itself
        (``KernelStopped``, ``Fenced``)."""
        if self._sent:
            return
        self._sent = True
        if not self._future.done():
            self._future.set_exception(error)

    def withdraw(self) -> asyncio.Future[Any]:
        """The handler that deferred this is re-run (its ``save`` lost to a
        ``Conflict``): take the reply back for the re-run, which defers it anew. This
        handle can no longer send it."""
        self._sent = self._withdrawn = True
        self._forget(self._future)
        return self._future

    def _settle(self) -> None:
        if self._withdrawn:
            raise UsageError(
                f"{self._activation.id}: this deferred reply was withdrawn: the handler that"
                " deferred it was re-run after a Conflict, and its re-run deferred the reply anew"
            )
        if self._sent:
            raise UsageError(f"{self._activation.id}: this ask was already answered")
        self._sent = True
        self._forget(self._future)

    def _forget(self, _: asyncio.Future[Any]) -> None:
        pending = self._activation.pending
        if pending is not None:
            pending.discard(self)
