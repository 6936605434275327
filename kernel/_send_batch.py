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

import msgspec

from ._envelope import Envelope
from ._wire_frames import MAX_ITEMS  # (messages in one batch frame at most)

__all__ = ["MAX_BYTES", "MAX_ITEMS", "EncodeInto", "SendBatch", "array_header", "item"]

MAX_BYTES = 8 * 1024
"""Encoded bytes of one batch's items at most (then it is sent and another begins).

Small, because a transport bounds its per-peer send queue in frames (``send_queue``):
a batch of small messages is what saves per-frame work, and this keeps what a full
queue holds near what it held before batching (at most ``send_queue`` x 8 KiB of
batched messages, 8 MiB by default), so a receiver that stops reading still stops its
senders soon (backpressure). A message of 8 KiB or more fills a batch alone, at
little loss: its frame's own work is small beside its own."""


class SendBatch:
    """The deliveries to one peer that followed ``first`` in this loop pass.

    A delivery joins it when its message's type is ``type`` and its kind, target,
    sender, chain and headers are ``first``'s (``Remote.send`` checks, then does what
    ``add`` does, inline).

    Attributes:
        first: the delivery sent alone that opened the batch: its routing is every
            item's (the items are not it).
        envelopes: the batched deliveries, in order.
        buffer: their wire items (``ItemOut``'s layout), encoded one after the other
            as they joined (the frame's items array is this, behind its header).
    """

    __slots__ = ("buffer", "envelopes", "first", "type")

    def __init__(self, first: Envelope) -> None:
        self.first = first
        self.type = type(first.payload)
        self.envelopes: list[Envelope] = []
        self.buffer = bytearray()

    def add(self, env: Envelope, encode_into: EncodeInto, now: Callable[[], float]) -> None:
        """Encode ``env``'s item onto the buffer (``encode_into``: msgspec's
        ``Encoder.encode_into``; ``now``: the loop's clock, read for a deadline).

        Raises:
            whatever ``encode_into`` raised (the buffer is as it was).
        """
        buffer = self.buffer
        start = len(buffer)
        try:
            encode_into(item(env, now), buffer, start)
        except Exception:
            del buffer[start:]
            raise
        self.envelopes.append(env)

    def items(self) -> msgspec.Raw:
        """The frame's items array: its msgpack header, then the encoded items."""
        return msgspec.Raw(array_header(len(self.envelopes)) + self.buffer)

    def halves(
        self, encode_into: EncodeInto, now: Callable[[], float]
    ) -> tuple[SendBatch, SendBatch]:
        """The batch in two, in order (for a frame over the transport's limit)."""
        half = len(self.envelopes) // 2
        parts = SendBatch(self.first), SendBatch(self.first)
        for part, envelopes in zip(
            parts, (self.envelopes[:half], self.envelopes[half:]), strict=True
        ):
            for env in envelopes:
                part.add(env, encode_into, now)
        return parts


EncodeInto = Callable[[Any, bytearray, int], None]


def item(env: Envelope, now: Callable[[], float]) -> tuple[Any, ...]:
    """``env``'s wire item (``ItemOut``'s layout, a plain tuple: the same msgpack
    array, cheaper to build); its remaining time read from ``now`` if it has a
    deadline."""
    deadline = env.deadline
    if deadline is None:
        return (env.id, env.payload, env.correlation_id, env.causation_id)
    return (env.id, env.payload, env.correlation_id, env.causation_id, deadline - now())


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")
