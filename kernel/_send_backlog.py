"""The deliveries for one peer that could not be queued at once, sent in order.

``Remote.send`` hands a frame to the transport's ``send_now`` when the connection is
up and its queue has room (the common case: no task, no future). When it has not,
the delivery joins its peer's ``Backlog`` and one task per peer sends the backlog in
order, awaiting the transport's ``send`` for each (so the connection's backpressure
holds the senders, who await their delivery's future). While a backlog exists, every
new delivery to that peer joins it too, so deliveries enter the connection in the
order they were sent, whatever order waiting senders would resume in, and each can
carry its sequence number (``kerna._delivery_order``) taken when it enters.

A delivery whose sender gave up before its turn (a cancelled tell, an ask past its
deadline: its future is done) is skipped, never sent late; one that could not be sent
fails its future with the transport's error (``PeerUnreachable``, ...), for its sender
to handle. Memory: one entry per waiting sender (each awaits its future), one task per
peer with a backlog, none once it has drained.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from ._envelope import Envelope
from ._errors import KernelStopped
from ._send_batch import SendBatch

__all__ = ["Backlog"]


class Backlog:
    """Deliveries waiting for one peer's connection, sent by ``run`` one at a time."""

    __slots__ = ("_items", "node")

    def __init__(self, node: str) -> None:
        self.node = node
        self._items: deque[tuple[Envelope | SendBatch, asyncio.Future[None]]] = deque()

    def add(
        self, env: Envelope | SendBatch, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[None]:
        """Queue ``env`` (a delivery, or a batch of them: ``kerna._send_batch``); the
        future completes when it is handed to the transport (or fails with why it was
        not)."""
        future: asyncio.Future[None] = loop.create_future()
        self._items.append((env, future))
        return future

    async def run(self, send_one: Callable[[Envelope | SendBatch], Awaitable[None]]) -> None:
        """Send the queued deliveries in order with ``send_one`` until none is left."""
        items = self._items
        while items:
            env, future = items.popleft()
            if future.done():  # its sender gave up: not sent late
                continue
            try:
                await send_one(env)
            except asyncio.CancelledError:  # the kernel stops (its sender was not cancelled)
                items.appendleft((env, future))
                self.close()
                raise
            except Exception as exc:  # not sent: its sender handles the error
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(None)

    def close(self) -> None:
        """Fail the deliveries still waiting (the kernel stops)."""
        while self._items:
            _, future = self._items.popleft()
            if not future.done():
                future.set_exception(KernelStopped(f"kernel stopped before sending to {self.node}"))
