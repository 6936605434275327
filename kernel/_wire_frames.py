"""The frame layouts on the wire between kerna nodes (``kerna._wire`` encodes and
decodes them).

Every frame is one msgpack array, a msgspec ``array_like`` Struct tagged by a small
int: 1 a delivery, 2 a reply, 3 an error reply, 4 a batch of deliveries. The ``In``
layouts validate as they decode (ids non-negative 63-bit, kind 0-2, a finite remaining
time, str headers) and keep the message as ``msgspec.Raw``; the ``Out`` layouts carry
the message itself, so a frame is encoded in one pass. Fields are appended with
defaults, never reordered: an older peer ignores what it does not know, a newer one's
missing fields take their defaults.

A **batch** (tag 4) is what a sender's ``Remote`` makes of the deliveries it sends one
peer in one loop pass that share their routing: kind, message type, target, sender,
ask chain and headers are said once, and each item is a message with its own id,
conversation ids and remaining time (``kerna._send_batch``). The items are numbered
from ``seq`` on, in order. Only a peer that said it reads batches gets them
(``kerna._schema_exchange``).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

import msgspec

__all__ = [
    "MAX_ITEMS",
    "BatchIn",
    "BatchOut",
    "DeliveryIn",
    "DeliveryOut",
    "ErrorReply",
    "ItemIn",
    "ItemOut",
    "ItemsIn",
    "ReplyIn",
    "ReplyOut",
    "TypedItem",
    "typed_items",
]

_Id = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
_Kind = Annotated[int, msgspec.Meta(ge=0, le=2)]
_Seconds = Annotated[float, msgspec.Meta(ge=-1e9, le=1e9)]  # finite: nan fails too
_Pair = tuple[str, str]


class DeliveryIn(msgspec.Struct, array_like=True, tag=1, frozen=True, gc=False):
    id: _Id
    kind: _Kind
    tag: str
    target: str  # the agent type, or the topic of an event
    key: str | None  # None for an event
    payload: msgspec.Raw
    sender: _Pair | None = None
    correlation_id: _Id = 0
    causation_id: _Id = 0
    remaining: _Seconds | None = None
    chain: tuple[_Pair, ...] = ()
    headers: dict[str, str] | None = None
    reply_to: str | None = None
    # The sender's numbering (trailing defaults: an older peer sends neither, and
    # ignores both): its Remote's random epoch and a per-peer counter from 1.
    epoch: _Id = 0
    seq: _Id = 0


class DeliveryOut(msgspec.Struct, array_like=True, tag=1, omit_defaults=True):
    # DeliveryIn's layout with the message itself as payload: encoded in one pass
    id: int
    kind: int
    tag: str
    target: str
    key: str | None
    payload: Any
    sender: _Pair | None = None
    correlation_id: int = 0
    causation_id: int = 0
    remaining: float | None = None
    chain: tuple[_Pair, ...] = ()
    headers: dict[str, str] | None = None
    reply_to: str | None = None
    epoch: int = 0
    seq: int = 0


class ReplyIn(msgspec.Struct, array_like=True, tag=2, frozen=True, gc=False):
    id: _Id
    request_tag: str
    tag: str | None  # the value's tag when it is a Message
    payload: msgspec.Raw


class ReplyOut(msgspec.Struct, array_like=True, tag=2):
    id: int
    request_tag: str
    tag: str | None
    payload: Any


class ErrorReply(msgspec.Struct, array_like=True, tag=3, frozen=True, gc=False):
    id: _Id
    type_name: str
    message: str
    traceback: str = ""
    node: str = ""  # where it was raised (a trailing default: older peers ignore it)


class ItemIn(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One message of a batch, as received."""

    id: _Id
    payload: msgspec.Raw
    correlation_id: _Id = 0
    causation_id: _Id = 0
    remaining: _Seconds | None = None


class ItemOut(msgspec.Struct, array_like=True, omit_defaults=True):
    """One message of a batch, to send (its payload encoded already, as ``Raw``)."""

    id: int
    payload: msgspec.Raw
    correlation_id: int = 0
    causation_id: int = 0
    remaining: float | None = None


MAX_ITEMS = 256
"""Messages in one batch frame at most, both ways: a sender gathers no more
(``kerna._send_batch``), and a receiver refuses a batch of more whole, before it
decodes an item (it hands a batch over in one callback, an object per item: a hostile
frame of millions of tiny items must not cost that)."""

ItemsIn = Annotated[list[ItemIn], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]
"""A batch's items, each message still encoded (to refuse them one by one)."""

M = TypeVar("M")


class TypedItem(msgspec.Struct, Generic[M], array_like=True, frozen=True, gc=False):
    """One message of a batch decoded with its type (``ItemIn``'s layout): a batch of a
    known type is decoded in one pass (``TypedItems``)."""

    id: _Id
    payload: M
    correlation_id: _Id = 0
    causation_id: _Id = 0
    remaining: _Seconds | None = None


def typed_items(message_type: type[M]) -> Any:
    """The type of a batch's items whose messages are ``message_type``."""
    generic: Any = TypedItem  # (subscripted with a runtime type argument)
    listed: Any = list
    return Annotated[
        listed[generic[message_type]], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)
    ]


class BatchIn(msgspec.Struct, array_like=True, tag=4, frozen=True, gc=False):
    """Deliveries sharing their routing, as received (``DeliveryIn``'s fields). The
    items stay encoded until the message type is known (``ItemsIn``, ``typed_items``)."""

    kind: _Kind
    tag: str
    target: str
    key: str | None
    items: msgspec.Raw
    sender: _Pair | None = None
    chain: tuple[_Pair, ...] = ()
    headers: dict[str, str] | None = None
    reply_to: str | None = None
    epoch: _Id = 0
    seq: _Id = 0  # the first item's number; the others follow it


class BatchOut(msgspec.Struct, array_like=True, tag=4, omit_defaults=True):
    """``BatchIn``'s layout, to send."""

    kind: int
    tag: str
    target: str
    key: str | None
    items: list[ItemOut] | list[tuple[Any, ...]] | msgspec.Raw  # (or encoded already)
    sender: _Pair | None = None
    chain: tuple[_Pair, ...] = ()
    headers: dict[str, str] | None = None
    reply_to: str | None = None
    epoch: int = 0
    seq: int = 0
