"""The wire encoding: envelopes and replies as msgpack frames between kerna nodes.

Only messages that cross nodes take this path; in-process messages stay by reference.

A frame is one msgpack array (a msgspec ``array_like`` Struct, tagged by a small int):

- a **delivery** (tag 1): the envelope's routing fields and the message. The message
  travels as ``msgspec.Raw``, encoded once with its wire tag, so a node that forwards a
  frame never decodes it; the destination decodes it into the type registered for its
  tag. The deadline travels as the seconds *remaining* (clocks differ between hosts):
  the receiver rebuilds an absolute ``loop.time()`` deadline (``Delivery.envelope``).
  ``reply_to`` is the asking node's address; the reply names the ask's message id.
- a **reply** (tag 2): the value a handler returned to a remote asker.
- an **error reply** (tag 3): what the asker raises, a ``RemoteError``'s fields.

Schema evolution: a peer's unknown fields are ignored (in a message and in the frame
itself: a newer peer may append fields), missing fields take their defaults; anything
else that does not match the registered type is an error, never a default object.

Reply values: a ``Message`` (decoded by its tag into its registered type, whatever the
request declares), or any value msgspec encodes. A non-Message value is decoded into
the reply type the request declares (``Request[int]``, ``Request[list[Pong]]``,
``Request[datetime]``); for an undeclared reply (a plain ``Message`` asked) it comes
back as msgpack's natural types: None, bool, int, float, str, bytes, list (a tuple
arrives as a list), dict.

Hostile input: ``WireCodec.decode`` raises ``WireError`` and nothing else, with a
``WireErrorReason`` and the peer, tag and (when the frame's header decoded) the message
id and reply-to address, so the caller can answer an asker with an error reply and
dead-letter the rest; each reason is counted (``WireCodec.errors``). An asker answered
with ``encode_error(err.message_id, err)`` raises ``RemoteError`` whose ``type_name``
ends in ``WireError`` and whose message names the reason, tag and peer.

Costs and bounds: nesting is capped at ``max_depth`` levels inside one message. A
message type whose values cannot nest past the cap (``schema_depth``: plain fields,
lists of Structs, ...) is decoded straight away: its typed decoder refuses a container
where the schema has none, so no byte scan is needed. A type that can (a field typed
``Any``, ``Raw``, a recursive Struct) has its payload scanned first (``exceeds``: a byte
count at C speed, a walk in Python for the rare frame with many container bytes), and
so does a frame that does not decode at all, so that a depth bomb is refused as
``TOO_DEEP`` (msgspec itself stops at Python's recursion limit, which is caught). The
envelope's fields are validated as they decode (ids non-negative 63-bit, kind 0-2, a
finite remaining time, str headers); the payload is decoded only into its registered
type, so a mismatch fails at the first wrong field. A message field typed ``Any`` (or
``list[Any]``) decodes into plain Python objects, which take up to ~50x the bytes they
came in: size ``max_frame_size`` for what a node should accept.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec

from ._envelope import ASK, EVENT, KIND_NAMES, Envelope
from ._errors import KernaError, RegistrationError, RemoteError
from ._failures import type_name
from ._ids import AgentId
from ._message import Message
from ._wire_decoded import Batch, Delivery, Reply
from ._wire_depth import exceeds
from ._wire_frames import (
    BatchIn,
    BatchOut,
    DeliveryIn,
    DeliveryOut,
    ErrorReply,
    ItemIn,
    ItemOut,
    ItemsIn,
    ReplyIn,
    ReplyOut,
    TypedItem,
    typed_items,
)
from ._wire_types import MessageTypes

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_FRAME_SIZE",
    "Batch",
    "Delivery",
    "MessageTypes",
    "Reply",
    "WireCodec",
    "WireError",
    "WireErrorReason",
]

DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024  # the transports' default frame limit
DEFAULT_MAX_DEPTH = 32  # nesting of one message: a Struct is 1, a list of Structs 2, ...


class WireErrorReason(enum.StrEnum):
    """Why a frame was refused: the values of ``WireError.reason`` (plain strs too)."""

    MALFORMED = "malformed"
    """Not a kerna frame: not msgpack, truncated, or fields of the wrong types."""
    UNKNOWN_TAG = "unknown_tag"
    """The message's wire tag is not registered at the destination."""
    BAD_PAYLOAD = "bad_payload"
    """The payload does not match the type registered for its tag."""
    TOO_LARGE = "too_large"
    """The frame is over ``max_frame_size``."""
    TOO_DEEP = "too_deep"
    """The frame nests arrays or maps deeper than the cap."""
    UNENCODABLE = "unencodable"
    """(Sending side) the message or reply value cannot be encoded."""


class WireError(KernaError):
    """A frame could not be decoded (or a value encoded); nothing else was affected.

    Attributes:
        reason: a ``WireErrorReason``.
        detail: what was wrong (msgspec's text names the field: ``at `$.n```).
        peer: the address the frame came from ("" when encoding).
        tag: the message's wire tag, when known.
        message_id: the frame's message id, when its header decoded (0 otherwise).
        reply_to: for an ask whose header decoded, the asker's address: answer it
            with ``WireCodec.encode_error`` (a dead letter otherwise).
        is_reply: the frame is a reply whose header decoded: ``message_id`` is the
            ask it answers (fail that ask with this error).
    """

    def __init__(
        self,
        reason: WireErrorReason,
        detail: str,
        *,
        peer: str = "",
        tag: str | None = None,
        message_id: int = 0,
        reply_to: str | None = None,
        is_reply: bool = False,
    ) -> None:
        where = f"frame from {peer}" if peer else "frame"
        if tag is not None:
            where += f" (tag {tag!r})"
        super().__init__(f"{where}: {reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.peer = peer
        self.tag = tag
        self.message_id = message_id
        self.reply_to = reply_to
        self.is_reply = is_reply


_ANY = msgspec.msgpack.Decoder()
_FRAME = msgspec.msgpack.Decoder(DeliveryIn | ReplyIn | ErrorReply | BatchIn)
_ITEMS = msgspec.msgpack.Decoder(ItemsIn)


class WireCodec:
    """Encodes envelopes and replies into frames and decodes frames from peers.

    One per node; not thread-safe (it reuses one buffer). See the module docstring.

    Attributes:
        types: the registered message types.
        max_frame_size: frames over it are refused both ways (``TOO_LARGE``).
        max_depth: nesting allowed inside one message (``TOO_DEEP``).
        errors: refused frames per ``WireErrorReason`` (a ``Counter``).
        node_id: this node's id, named by the error replies it sends.
        clock: the time deadlines are rebuilt on (the loop's ``time``; by default the
            running loop's, or ``time.monotonic`` when none runs).
        encode_item: encodes a batch item (``ItemOut``'s layout, a tuple) into a
            buffer at an offset (msgspec's ``Encoder.encode_into``), raising msgspec's
            errors unchecked: ``encode_payload`` encodes the message alone, checked.
    """

    def __init__(
        self,
        types: MessageTypes | None = None,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.types = MessageTypes() if types is None else types
        self.max_frame_size = max_frame_size
        self.max_depth = max_depth
        self.errors: Counter[str] = Counter()
        self.node_id = ""
        self.clock: Callable[[], float] = _loop_time
        self._encoder = msgspec.msgpack.Encoder()
        # A batch item into a buffer (msgspec's errors: encode_payload names them).
        self.encode_item: Callable[[Any, bytearray, int], None] = self._encoder.encode_into
        self._buffer = bytearray(256)
        # Per delivery tag seen: its decoder and how deep its values can nest.
        self._known: dict[str, tuple[msgspec.msgpack.Decoder[Any], int]] = {}
        self._batch_decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}  # per tag

    # -- encoding --------------------------------------------------------------------

    def encode(
        self,
        env: Envelope,
        reply_to: str | None = None,
        *,
        now: float | None = None,
        epoch: int = 0,
        seq: int = 0,
    ) -> bytes:
        """The delivery frame of ``env`` (a copy of the reused buffer: keep it).

        Args:
            env: the envelope; its payload must be a ``Message``.
            reply_to: for an ask, this node's address, where the reply goes.
            now: ``loop.time()`` (default: the running loop's), for the remaining time.
            epoch: the sender's epoch (0 with ``seq`` 0: not numbered).
            seq: the frame's number among those sent to its peer (``Delivery.seq``).

        Raises:
            WireError: ``UNENCODABLE`` (not a Message, or a field msgspec cannot encode)
                or ``TOO_LARGE``.
            RuntimeError: ``env`` has a deadline, ``now`` is not given and no loop runs.
        """
        self.encode_into(env, self._buffer, reply_to, now=now, epoch=epoch, seq=seq)
        return bytes(self._buffer)

    def encode_into(
        self,
        env: Envelope,
        buffer: bytearray,
        reply_to: str | None = None,
        *,
        offset: int = 0,
        now: float | None = None,
        epoch: int = 0,
        seq: int = 0,
    ) -> None:
        """Encode ``env``'s frame into ``buffer`` at ``offset`` (e.g. after a length
        prefix; the buffer is truncated after the frame).

        Raises:
            WireError: as ``encode``.
        """
        message = env.payload
        if not isinstance(message, Message):
            raise WireError(
                WireErrorReason.UNENCODABLE, f"the payload is a {type(message).__qualname__}, "
                "not a kerna.Message",
            )  # fmt: skip
        try:
            tag = self.types.add(type(message))
        except RegistrationError as exc:
            raise WireError(WireErrorReason.UNENCODABLE, str(exc)) from exc
        remaining = None
        if env.deadline is not None:
            remaining = env.deadline - (asyncio.get_running_loop().time() if now is None else now)
        name, key, sender, chain, headers = _routing(env)
        frame = DeliveryOut(
            env.id, env.kind, tag, name, key, message, sender, env.correlation_id,
            env.causation_id, remaining, chain, headers,
            reply_to if env.kind == ASK else None, epoch, seq,
        )  # fmt: skip
        self._encode(frame, buffer, offset, tag)

    def encode_payload(self, message: Message) -> msgspec.Raw:
        """``message`` encoded alone, for a batch item (``encode_batch``); its type is
        the batch's (registered by the delivery frame that opened it).

        Raises:
            WireError: ``UNENCODABLE`` or ``TOO_LARGE``, as ``encode``.
        """
        try:
            data = self._encoder.encode(message)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise WireError(WireErrorReason.UNENCODABLE, str(exc)) from exc
        if len(data) > self.max_frame_size:
            raise WireError(
                WireErrorReason.TOO_LARGE,
                f"{len(data)} bytes, over the limit of {self.max_frame_size}",
            )
        return msgspec.Raw(data)

    def encode_batch(
        self,
        env: Envelope,
        items: list[ItemOut] | list[tuple[Any, ...]] | msgspec.Raw,
        reply_to: str | None = None,
        *,
        epoch: int = 0,
        seq: int = 0,
    ) -> bytes:
        """The batch frame of ``items``, whose routing is ``env``'s (the batch's first
        envelope: kind, target, sender, chain and headers; its message's type is every
        item's). ``seq`` numbers the first item. ``items``: ``ItemOut``s, tuples in its
        layout, or their msgpack array already encoded (``msgspec.Raw``).

        Raises:
            WireError: ``TOO_LARGE``.
        """
        tag = self.types.add(type(env.payload))
        name, key, sender, chain, headers = _routing(env)
        frame = BatchOut(
            env.kind, tag, name, key, items, sender, chain, headers,
            reply_to if env.kind == ASK else None, epoch, seq,
        )  # fmt: skip
        self._encode(frame, self._buffer, 0, tag)
        return bytes(self._buffer)

    def encode_reply(self, message_id: int, request: type[Message] | str, value: Any) -> bytes:
        """The reply frame for the ask ``message_id`` of type (or tag) ``request``.

        Raises:
            WireError: ``UNENCODABLE`` (send ``encode_error`` instead) or ``TOO_LARGE``.
        """
        request_tag = request if isinstance(request, str) else self.types.add(request)
        tag = None
        if isinstance(value, Message):
            try:
                tag = self.types.add(type(value))
            except RegistrationError as exc:
                raise WireError(WireErrorReason.UNENCODABLE, str(exc)) from exc
        self._encode(ReplyOut(message_id, request_tag, tag, value), self._buffer, 0, tag)
        return bytes(self._buffer)

    def encode_error(self, message_id: int, error: BaseException) -> bytes:
        """The error reply for the ask ``message_id``: the asker raises a
        ``RemoteError`` (``error``'s own fields if it is one, else its type and text)."""
        node = self.node_id
        if isinstance(error, RemoteError):
            frame = ErrorReply(
                message_id, error.type_name, error.message, error.traceback, error.node or node
            )
        else:  # named as in-process (``kerna.MailboxFull``, ``ValueError``)
            frame = ErrorReply(message_id, type_name(error), str(error), "", node)
        return self._encoder.encode(frame)

    def _encode(self, frame: Any, buffer: bytearray, offset: int, tag: str | None) -> None:
        try:
            self._encoder.encode_into(frame, buffer, offset)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise WireError(WireErrorReason.UNENCODABLE, str(exc), tag=tag) from exc
        if len(buffer) - offset > self.max_frame_size:
            size = len(buffer) - offset
            del buffer[offset:]
            raise WireError(
                WireErrorReason.TOO_LARGE,
                f"{size} bytes, over the limit of {self.max_frame_size}",
                tag=tag,
            )

    # -- decoding --------------------------------------------------------------------

    def decode(self, frame: bytes | bytearray | memoryview, peer: str) -> Delivery | Reply | Batch:
        """Decode a frame received from ``peer``.

        Raises:
            WireError: the frame is refused (counted in ``errors`` by reason); never
                anything else.
        """
        try:  # (one function, not two: this runs for every frame)
            if len(frame) > self.max_frame_size:
                raise WireError(
                    WireErrorReason.TOO_LARGE,
                    f"{len(frame)} bytes, over the limit of {self.max_frame_size}",
                    peer=peer,
                )
            data = frame if type(frame) is bytes else bytes(frame)  # a bytearray, a memoryview
            try:
                head = _FRAME.decode(data)
            except (msgspec.DecodeError, RecursionError) as exc:
                # msgspec recursed (to skip the payload or an unknown field) or the shape
                # is wrong: name nesting past the cap as such (+ 1: the frame's own array).
                if exceeds(data, self.max_depth + 1):
                    raise WireError(
                        WireErrorReason.TOO_DEEP,
                        f"nested deeper than {self.max_depth} levels",
                        peer=peer,
                    ) from None
                raise WireError(WireErrorReason.MALFORMED, str(exc), peer=peer) from None
            if type(head) is DeliveryIn:
                return self._delivery(head, peer)
            if type(head) is ReplyIn:
                return self._reply(head, peer)
            if type(head) is BatchIn:
                return self._batch(head, peer)
            assert type(head) is ErrorReply
            error = RemoteError(head.type_name, head.message, head.traceback, head.node)
            return Reply(head.id, error=error)
        except WireError as exc:
            self.errors[exc.reason] += 1
            raise

    def _delivery(self, head: DeliveryIn, peer: str) -> Delivery:
        tag = head.tag
        kind = head.kind
        key = head.key
        reply_to = head.reply_to if kind == ASK else None
        if (key is None) != (kind == EVENT):
            raise _misaddressed(kind, key, peer, tag, head.id, reply_to)
        known = self._known.get(tag)
        decoder, depth = known if known is not None else self._decoder(tag)
        if decoder is not None and depth <= self.max_depth:
            try:  # the common case: a type whose values cannot nest past the cap
                message = decoder.decode(head.payload)
            except Exception:  # the slow path below names what was wrong
                message = self._checked_payload(decoder, head.payload, peer, tag, head.id, reply_to)
        else:
            message = self._checked_payload(decoder, head.payload, peer, tag, head.id, reply_to)
        if not isinstance(message, Message):
            raise WireError(
                WireErrorReason.BAD_PAYLOAD, "not a message", peer=peer, tag=tag,
                message_id=head.id, reply_to=reply_to,
            )  # fmt: skip
        sender = head.sender
        chain = head.chain
        return Delivery(
            head.id, kind, tag, head.target if key is None else AgentId(head.target, key),
            message, None if sender is None else AgentId(*sender),
            head.correlation_id, head.causation_id, head.remaining,
            tuple([AgentId(*a) for a in chain]) if chain else (), head.headers,
            reply_to, head.epoch, head.seq,
        )  # fmt: skip

    def _batch(self, head: BatchIn, peer: str) -> Batch:
        """Decode a batch's items: all at once with their type when every one decodes
        (the common case), else one by one, an item that does not decode refused alone
        (a ``WireError`` in its place, counted) as a frame of its own would be."""
        tag = head.tag
        kind = head.kind
        key = head.key
        reply_to = head.reply_to if kind == ASK else None
        sender = None if head.sender is None else AgentId(*head.sender)
        chain = tuple([AgentId(*a) for a in head.chain]) if head.chain else ()
        headers = head.headers
        target = head.target if key is None else AgentId(head.target, key)
        out: list[Envelope | WireError] = []
        typed: list[TypedItem[Message]] | None = None
        misaddressed = (key is None) != (kind == EVENT)
        if not misaddressed:
            batch_decoder = self._batch_decoders.get(tag)
            if batch_decoder is None:
                batch_decoder = self._batch_decoder(tag)
            if batch_decoder is not None:
                try:
                    typed = batch_decoder.decode(head.items)
                except Exception:  # one of them does not: each is decoded on its own
                    typed = None
        if typed is not None:
            add = out.append
            now = None
            for item in typed:
                remaining = item.remaining
                deadline = None
                if remaining is not None:
                    if now is None:
                        now = self.clock()
                    deadline = now + remaining
                add(
                    Envelope(
                        item.id, kind, target, item.payload, sender, item.correlation_id,
                        item.causation_id, deadline, chain, None, headers,
                    )
                )  # fmt: skip
        else:
            items = self._items(head, peer)
            if misaddressed:
                out = [_misaddressed(kind, key, peer, tag, item.id, reply_to) for item in items]
            else:
                out = self._batch_slow(head, items, peer, reply_to, sender, chain, target)
        refused = 0
        if typed is None:
            for error in out:
                if type(error) is WireError:
                    self.errors[error.reason] += 1
                    refused += 1
        return Batch(
            kind, tag, target, sender, chain, headers, reply_to, head.epoch, head.seq, out,
            refused,
        )  # fmt: skip

    def _batch_decoder(self, tag: str) -> msgspec.msgpack.Decoder[Any] | None:
        """The decoder of a batch of ``tag``'s messages in one pass, for a registered
        type whose values cannot nest past the cap (None otherwise: one by one)."""
        decoder, depth = self._decoder(tag)
        message_type = self.types.get(tag)
        if decoder is None or message_type is None or depth > self.max_depth:
            return None
        batch_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
            typed_items(message_type)
        )
        self._batch_decoders[tag] = batch_decoder
        return batch_decoder

    @staticmethod
    def _items(head: BatchIn, peer: str) -> list[ItemIn]:
        """A batch's items, each message still encoded.

        Raises:
            WireError: they are not a list of items (the whole frame is refused).
        """
        try:
            items: list[ItemIn] = _ITEMS.decode(head.items)
        except (msgspec.DecodeError, RecursionError) as exc:
            reason = WireErrorReason.MALFORMED
            if isinstance(exc, RecursionError):
                reason = WireErrorReason.TOO_DEEP
            raise WireError(reason, f"batch items: {exc}", peer=peer, tag=head.tag) from None
        return items

    def _batch_slow(
        self,
        head: BatchIn,
        items: list[ItemIn],
        peer: str,
        reply_to: str | None,
        sender: AgentId | None,
        chain: tuple[AgentId, ...],
        target: AgentId | str,
    ) -> list[Envelope | WireError]:
        """Each item's envelope, or the error that refuses it (not yet counted)."""
        tag = head.tag
        decoder, _ = self._decoder(tag)
        out: list[Envelope | WireError] = []
        now = None
        for item in items:
            message = self._batch_item(decoder, item, peer, tag, reply_to)
            if isinstance(message, WireError):
                out.append(message)
                continue
            deadline = None
            if item.remaining is not None:
                if now is None:
                    now = self.clock()
                deadline = now + item.remaining
            out.append(
                Envelope(
                    item.id, head.kind, target, message, sender, item.correlation_id,
                    item.causation_id, deadline, chain, None, head.headers,
                )
            )  # fmt: skip
        return out

    def _batch_item(
        self,
        decoder: msgspec.msgpack.Decoder[Any] | None,
        item: ItemIn,
        peer: str,
        tag: str,
        reply_to: str | None,
    ) -> Message | WireError:
        """A batch item's message, or the error that refuses it (not yet counted)."""
        try:
            message = self._checked_payload(decoder, item.payload, peer, tag, item.id, reply_to)
        except WireError as exc:
            return exc
        if isinstance(message, Message):
            return message
        return WireError(
            WireErrorReason.BAD_PAYLOAD, "not a message", peer=peer, tag=tag,
            message_id=item.id, reply_to=reply_to,
        )  # fmt: skip

    def _decoder(self, tag: str) -> tuple[msgspec.msgpack.Decoder[Any] | None, int]:
        """The decoder of ``tag``'s type (None: not registered) and how deep its values
        can nest."""
        known = self._known.get(tag)
        if known is not None:
            return known
        types = self.types
        decoder = types.decoder(tag)
        depth = types.depth(tag)
        if decoder is not None:  # a tag's type never changes once registered
            self._known[tag] = (decoder, depth)
        return decoder, depth

    def _checked_payload(
        self,
        decoder: msgspec.msgpack.Decoder[Any] | None,
        payload: msgspec.Raw,
        peer: str,
        tag: str,
        message_id: int,
        reply_to: str | None,
    ) -> Any:
        """Decode a delivery's payload checking its depth first, or raise the error
        that names what is wrong with it."""
        self._check_depth(payload, peer, tag, message_id, reply_to)
        return self._payload(decoder, payload, peer, tag, message_id, reply_to)

    def _check_depth(
        self,
        payload: msgspec.Raw,
        peer: str,
        tag: str | None,
        message_id: int,
        reply_to: str | None,
        is_reply: bool = False,
    ) -> None:
        if exceeds(bytes(payload), self.max_depth):
            raise WireError(
                WireErrorReason.TOO_DEEP, f"nested deeper than {self.max_depth} levels",
                peer=peer, tag=tag, message_id=message_id, reply_to=reply_to,
                is_reply=is_reply,
            )  # fmt: skip

    def _reply(self, head: ReplyIn, peer: str) -> Reply:
        tag = head.tag
        types = self.types
        if tag is not None:
            decoder = types.decoder(tag, imported=True)
            depth = types.depth(tag)
        else:  # not a Message: decoded as the request's declared reply type, if any
            decoder = types.reply_decoder(head.request_tag) or _ANY
            depth = types.reply_depth(head.request_tag)
        if depth > self.max_depth:
            self._check_depth(head.payload, peer, tag or head.request_tag, head.id, None, True)
        try:
            value = self._payload(decoder, head.payload, peer, tag, head.id, None)
        except WireError as exc:
            raise WireError(
                exc.reason, f"{exc.detail} (the reply to {head.request_tag!r})", peer=peer,
                tag=exc.tag or head.request_tag, message_id=head.id, is_reply=True,
            ) from None  # fmt: skip
        return Reply(head.id, value)

    @staticmethod
    def _payload(
        decoder: msgspec.msgpack.Decoder[Any] | None,
        payload: msgspec.Raw,
        peer: str,
        tag: str | None,
        message_id: int,
        reply_to: str | None,
    ) -> Any:
        if decoder is None:
            raise WireError(
                WireErrorReason.UNKNOWN_TAG, "no message type is registered for this tag",
                peer=peer, tag=tag, message_id=message_id, reply_to=reply_to,
            )  # fmt: skip
        try:
            return decoder.decode(payload)
        except Exception as exc:  # msgspec's errors, or a __post_init__ that raised
            raise WireError(
                WireErrorReason.BAD_PAYLOAD, f"{type(exc).__name__}: {exc}",
                peer=peer, tag=tag, message_id=message_id, reply_to=reply_to,
            ) from None  # fmt: skip


def _routing(
    env: Envelope,
) -> tuple[
    str, str | None, tuple[str, str] | None, tuple[tuple[str, str], ...], dict[str, str] | None
]:
    """``env``'s routing as a frame carries it: the target's name and key (None: a
    topic), the sender and the chain as pairs, a copy of the headers."""
    target = env.target
    if isinstance(target, AgentId):
        name, key = target.type, target.key
    else:
        name, key = target, None
    sender = env.sender
    chain = env.chain
    headers = env.headers
    return (
        name, key, None if sender is None else (sender.type, sender.key),
        tuple([(a.type, a.key) for a in chain]) if chain else (),
        None if headers is None else dict(headers),
    )  # fmt: skip


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # no loop runs (a tool decoding frames): decode raises only WireError
        return time.monotonic()  # (what asyncio's own loop reads)


def _misaddressed(
    kind: int, key: str | None, peer: str, tag: str, message_id: int, reply_to: str | None
) -> WireError:
    """The error for a delivery whose key does not match its kind (an event has none)."""
    wrong = "without an agent key" if key is None else "addressed to an agent"
    return WireError(
        WireErrorReason.MALFORMED, f"a {KIND_NAMES[kind]} {wrong}",
        peer=peer, tag=tag, message_id=message_id, reply_to=reply_to,
    )  # fmt: skip
