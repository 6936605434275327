"""What decoding a frame gives (``kerna._wire``): a delivery, a batch of them, or a
reply. (A frame refused raises ``kerna._wire.WireError``.)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ._envelope import Envelope
from ._errors import RemoteError
from ._ids import AgentId
from ._message import Message

if TYPE_CHECKING:
    from ._wire import WireError

__all__ = ["Batch", "Delivery", "Reply"]


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """A decoded delivery frame: an envelope's fields and its message.

    Attributes:
        remaining: the seconds the sender had left before its deadline (None: none).
        reply_to: for an ask, the asker's node address (send the reply there).
        epoch: the sending Remote's random epoch (0: the frame is not numbered, an
            older peer).
        seq: the frame's number among those that Remote sent to this node (from 1;
            0: not numbered).
        The others are ``Envelope``'s.
    """

    id: int
    kind: int
    tag: str
    target: AgentId | str
    message: Message
    sender: AgentId | None
    correlation_id: int
    causation_id: int
    remaining: float | None
    chain: tuple[AgentId, ...]
    headers: dict[str, str] | None
    reply_to: str | None
    epoch: int = 0
    seq: int = 0

    def envelope(self, now: float) -> Envelope:
        """The local envelope, its deadline rebuilt on this node's clock (``now``:
        ``loop.time()``); it has no reply future (the caller routes the reply)."""
        deadline = None if self.remaining is None else now + self.remaining
        return Envelope(
            self.id, self.kind, self.target, self.message, self.sender, self.correlation_id,
            self.causation_id, deadline, self.chain, None, self.headers,
        )  # fmt: skip


class Batch(msgspec.Struct, frozen=True):
    """A decoded batch frame: deliveries that share their routing (``kerna._wire_frames``).

    Attributes:
        kind, tag, target, sender, chain, headers: every message's, as ``Delivery``'s.
        reply_to: for asks, the asker's node address.
        epoch: the sending Remote's epoch.
        seq: the first item's number (the others follow it; 0: not numbered).
        envelopes: each item's local envelope, in order (its deadline rebuilt on this
            node's clock, no reply future: the caller routes the reply), or the
            ``WireError`` that refuses that item alone (counted in ``WireCodec.errors``;
            the others are delivered).
        refused: how many of ``envelopes`` are ``WireError``s.
    """

    kind: int
    tag: str
    target: AgentId | str
    sender: AgentId | None
    chain: tuple[AgentId, ...]
    headers: dict[str, str] | None
    reply_to: str | None
    epoch: int
    seq: int
    envelopes: list[Envelope | WireError]
    refused: int


class Reply(msgspec.Struct, frozen=True, gc=False):
    """A decoded reply frame: the answer to the ask whose message id is ``id``.

    Attributes:
        id: the ask's message id.
        value: the reply value (None when ``error`` is set).
        error: the handler's failure, as the asker raises it.
    """

    id: int
    value: Any = None
    error: RemoteError | None = None

    def result(self) -> Any:
        """The value, or raise the error.

        Raises:
            RemoteError: the remote handler failed.
        """
        if self.error is not None:
            raise self.error
        return self.value
