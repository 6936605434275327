"""Deliveries to one peer gathered in one loop pass into one batch frame.

A node that sends many messages to one peer in one pass (a producer telling a remote
agent in a loop, 64 callers asking one remote agent) would otherwise send a frame per
message, and the receiver would split, decode and route each on its own: most of the
cost of a small message over a transport is that per-frame work, not the message. So
``Remote.send`` sends the first delivery of a pass to a peer at once, as a delivery
frame of its own (no latency is added to a lone message), and gathers the ones that
follow it in the same pass, while they share its routing (kind, message type, target,
sender, ask chain, headers), into a ``SendBatch``. The batch goes out as one frame
(``kerna._wire_frames``: the routing once, then each message with its id,
conversation ids and remaining time) at the end of the pass, when it is full
(``MAX_ITEMS`` messages or ``MAX_BYTES`` of them), or before anything else is sent to
that peer: a delivery that does not share the routing, a reply. Order is kept: a peer
never gets a later message before an earlier one. A batch whose frame would be over the
transport's ``max_frame_size`` (a small limit: each message fit alone) goes out in
halves, in order.

Gathering costs a callback per loop pass, so it is done only for a hot peer: one that
got two sends with no frame received by this node in between (as in one pass), until a
pass in which it got only one. A node that asks one peer at a time (a sequential ask:
one message, then its reply) never pays for it.

Each message is encoded when it is sent, so a message that cannot be encoded fails
its sender at once (``WireError``), batched or not. A batch is sent only to a peer that
said it reads batches (``kerna._schema_exchange``); the receiver delivers each item
as it would a frame of its own (an item that does not decode is refused alone).

What changes for a sender: a tell that joined a batch has returned before its frame
reached the transport. If the transport cannot take the batch at once (the connection
is down, its queue is full), the batch waits in the peer's ``Backlog`` like any
delivery (and later sends wait behind it); if it cannot be sent at all, its asks fail
with the transport's error and its tells are dead letters with that error (a lone tell
raises it instead). Delivery is at most once either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._envelope import Envelope

__all__ = ["MAX_BYTES", "MAX_ITEMS", "SendBatch"]

MAX_ITEMS = 256
"""Messages in one batch frame at most: a receiver hands a batch over whole."""
MAX_BYTES = 4 * 1024
"""Encoded message bytes in one batch at most (then it is sent and another begins).

Small, because a transport bounds its per-peer send queue in frames (``send_queue``):
a batch of small messages is what saves per-frame work, and this keeps what a full
queue holds near what it held before batching (at most ``send_queue`` x 4 KiB of
batched messages, 4 MiB by default), so a receiver that stops reading still stops its
senders soon (backpressure). A message of 4 KiB or more fills a batch alone, at
little loss: its frame's own work is small beside its own."""


class SendBatch:
    """The deliveries to one peer that followed ``first`` in this loop pass.

    A delivery joins it when its message's type is ``type`` and its kind, target,
    sender, chain and headers are ``first``'s (``Remote.send`` checks, inline, and
    appends to ``envelopes`` and ``items``).

    Attributes:
        first: the delivery sent alone that opened the batch: its routing is every
            item's (the items are not it).
        envelopes: the batched deliveries, in order.
        items: their wire items, ``ItemOut``'s layout as plain tuples (cheaper to build,
            the same msgpack arrays), without the remaining time: ``(id, message
            encoded as Raw, correlation_id, causation_id)``.
        size: the encoded messages' bytes.
        timed: whether one of them has a deadline.
    """

    __slots__ = ("envelopes", "first", "items", "size", "timed", "type")

    def __init__(self, first: Envelope) -> None:
        self.first = first
        self.type = type(first.payload)
        self.envelopes: list[Envelope] = []
        self.items: list[tuple[Any, ...]] = []
        self.size = 0
        self.timed = False

    def halves(self) -> tuple[SendBatch, SendBatch]:
        """The batch in two, in order (for a frame over the transport's limit)."""
        half = len(self.envelopes) // 2
        return self._part(slice(None, half)), self._part(slice(half, None))

    def _part(self, which: slice) -> SendBatch:
        part = SendBatch(self.first)
        part.envelopes = self.envelopes[which]
        part.items = self.items[which]
        part.size = sum(len(item[1]) for item in part.items)
        part.timed = self.timed
        return part

    def wire_items(self, now: Callable[[], float]) -> list[tuple[Any, ...]]:
        """The items to encode: ``items``, each with its remaining time if one has a
        deadline (``now``: the loop's clock, read only then)."""
        if not self.timed:
            return self.items
        at = now()
        return [
            (*item, None if env.deadline is None else env.deadline - at)
            for item, env in zip(self.items, self.envelopes, strict=True)
        ]
