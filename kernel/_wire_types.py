"""The message types a node decodes from the wire, by tag (``MessageTypes``).

A node decodes only the types it registered: the handled types of its agent types,
their requests' declared reply types (and the Message classes in them), and the types
it sends. Two classes with one tag are refused: the tag is the type's identity on the
wire.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Any

import msgspec

from ._errors import RegistrationError
from ._message import Message, defined_message
from ._replies import resolved_reply
from ._schema import fingerprint
from ._wire_depth import UNBOUNDED, schema_depth

__all__ = ["MessageTypes"]


class MessageTypes:
    """The message types a node decodes, by wire tag, with their declared reply types.

    The kernel adds the handled types of every registered agent type (``add_handled``);
    ``add`` also adds a request's declared reply type (and the Message classes in it),
    and encoding a message adds its type, so the replies to an ask decode. A handler of
    a base class takes its subclasses in-process; so does it across nodes: a delivery's
    tag that names a subclass of a handled type, defined in this process, is added when
    it first arrives.
    """

    def __init__(self) -> None:
        self._by_tag: dict[str, type[Message]] = {}
        self._tags: dict[type, str] = {}
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        self._replies: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        # How deep a decoded value of each type can nest (``schema_depth``): the codec
        # scans a payload's bytes for depth only where this is over its cap.
        self._depths: dict[str, int] = {}
        self._reply_depths: dict[str, int] = {}
        self._handled: tuple[type[Message], ...] = ()  # what agents here handle

    def add(self, message_type: type[Message]) -> str:
        """Register ``message_type`` (idempotent); returns its wire tag.

        Raises:
            RegistrationError: not a Message class, its tag is taken by another class,
                or msgspec cannot decode its fields.
        """
        tag = self._tags.get(message_type)
        if tag is not None:
            return tag
        if not (isinstance(message_type, type) and issubclass(message_type, Message)):
            raise RegistrationError(f"{message_type!r} is not a kerna.Message subclass")
        found = message_type.__struct_config__.tag
        if not isinstance(found, str):
            raise RegistrationError(f"{message_type.__qualname__}: a wire tag must be a str")
        tag = found
        other = self._by_tag.get(tag)
        if other is not None and other is not message_type:
            raise RegistrationError(
                f"wire tag {tag!r} is used by both {other.__module__}.{other.__qualname__} "
                f"and {message_type.__module__}.{message_type.__qualname__}"
            )
        try:
            decoder = msgspec.msgpack.Decoder(message_type)
        except TypeError as exc:
            raise RegistrationError(f"{message_type.__qualname__}: not decodable: {exc}") from exc
        self._by_tag[tag] = message_type
        self._tags[message_type] = tag
        self._decoders[tag] = decoder
        self._depths[tag] = _depth_of(message_type)
        reply = self.reply_type(message_type)
        if reply is not None:
            try:
                self._replies[tag] = msgspec.msgpack.Decoder(reply)
            except TypeError:  # a type variable, a protocol: decoded as plain values
                pass
            else:
                self._reply_depths[tag] = _depth_of(reply)
            for member in _message_classes(reply):
                self.add(member)
        return tag

    def add_all(self, message_types: Iterable[type[Message]]) -> None:
        """``add`` each of ``message_types`` (e.g. ``AgentType.handled_types()``).

        Raises:
            RegistrationError: as ``add``.
        """
        for message_type in message_types:
            self.add(message_type)

    def add_handled(self, message_types: Iterable[type[Message]]) -> None:
        """``add`` each of ``message_types``, the types an agent type handles: their
        subclasses (defined in this process) decode too, as ``decoder`` says.

        Raises:
            RegistrationError: as ``add``.
        """
        types = list(message_types)
        self.add_all(types)
        self._handled += tuple(t for t in types if t not in self._handled)

    def fingerprints(self) -> dict[str, str]:
        """A stable hash of each registered type's wire schema, by tag: what nodes
        compare in their handshake (``kerna._schema.fingerprint``).

        Raises:
            TypeError: msgspec cannot describe a field's type.
        """
        return {tag: fingerprint(cls) for tag, cls in sorted(self._by_tag.items())}

    def get(self, tag: str) -> type[Message] | None:
        """The type registered for ``tag``, if any."""
        return self._by_tag.get(tag)

    def tags(self) -> dict[str, type[Message]]:
        """Every registered tag and its type (a copy)."""
        return dict(self._by_tag)

    @staticmethod
    def reply_type(message_type: type[Message]) -> Any:
        """The reply type ``message_type`` declares, resolved (None: not a typed request,
        or a quoted reply that does not resolve: its replies decode as plain values)."""
        try:
            return resolved_reply(message_type)
        except NameError:
            return None

    def decoder(self, tag: str, *, imported: bool = False) -> msgspec.msgpack.Decoder[Any] | None:
        """The decoder of the messages tagged ``tag``: a registered type, or else the
        Message class defined (imported) in this process under that tag, added then:
        with ``imported`` (for replies) any such class, so the reply to an ask of a
        plain ``Message`` decodes wherever its class is imported; for a delivery only a
        subclass of a type some agent here handles: a peer cannot make this node build
        any class it happens to import."""
        decoder = self._decoders.get(tag)
        if decoder is None:
            defined = defined_message(tag)
            if defined is None or not issubclass(defined, Message):
                return None
            if not imported and not issubclass(defined, self._handled):
                return None  # a delivery of a type no agent here handles
            try:
                self.add(defined)
            except RegistrationError:
                return None
            decoder = self._decoders.get(tag)
        return decoder

    def reply_decoder(self, request_tag: str) -> msgspec.msgpack.Decoder[Any] | None:
        """The decoder of the replies to the request tagged ``request_tag``, if typed."""
        return self._replies.get(request_tag)

    def depth(self, tag: str) -> int:
        """How deep a decoded message tagged ``tag`` can nest (``UNBOUNDED`` if it
        can without limit, or the tag is not registered)."""
        return self._depths.get(tag, UNBOUNDED)

    def reply_depth(self, request_tag: str) -> int:
        """How deep a typed reply to ``request_tag`` can nest (``UNBOUNDED`` if
        untyped or without limit)."""
        return self._reply_depths.get(request_tag, UNBOUNDED)


def _depth_of(tp: Any) -> int:
    try:
        return schema_depth(tp)
    except (TypeError, ValueError):  # msgspec cannot describe it: scan every payload
        return UNBOUNDED


def _message_classes(form: Any) -> list[type[Message]]:
    """The Message classes named anywhere in a type (union members, generic args)."""
    if isinstance(form, type) and issubclass(form, Message):
        return [form]
    return [m for arg in typing.get_args(form) for m in _message_classes(arg)]
