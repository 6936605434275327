"""Messages given as JSON (``kerna ask Echo a '{"type": "Ping", "n": 1}'``).

The shape is the one msgspec encodes a kerna Message to: a JSON object whose ``"type"``
is the message's wire tag and whose other keys are its fields. On the command line the
tag may be shortened to the class name (``"Ping"`` for ``myapp.messages.Ping``) when
exactly one registered type has that name. Only the types the node's agent types
handle decode (``Kernel.message_types``): the admin API cannot build arbitrary classes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kerna._message import Message

__all__ = ["BadMessage", "decode_message", "encode_value"]


class BadMessage(ValueError):
    """A JSON message that does not decode into a registered type; the text names the
    tag or the field that was wrong."""


def resolve_tag(tag: str, types: dict[str, type[Message]]) -> type[Message]:
    """The registered type ``tag`` names: an exact wire tag, or a class name that
    exactly one registered type has.

    Raises:
        BadMessage: no such type, or the short name is ambiguous.
    """
    exact = types.get(tag)
    if exact is not None:
        return exact
    matches = [cls for t, cls in types.items() if t.rsplit(".", 1)[-1] == tag]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(types)) or "none: no agent type is registered"
    if matches:
        names = ", ".join(sorted(str(c.__struct_config__.tag) for c in matches))
        raise BadMessage(f"message type {tag!r} is ambiguous: give its full tag ({names})")
    raise BadMessage(f"no registered message type {tag!r} (known: {known})")


def decode_message(value: Any, types: dict[str, type[Message]]) -> Message:
    """Decode the JSON-decoded ``value`` (``{"type": tag, **fields}``) into its type.

    Unknown fields are refused (a typo would otherwise silently fall back to a default).

    Raises:
        BadMessage: not an object, no ``"type"``, an unknown type, an unknown, missing
            or wrongly typed field (named, e.g. ``$.n``).
    """
    if not isinstance(value, dict):
        raise BadMessage(f"a message is a JSON object with a 'type', got {value!r}")
    tag = value.get("type")
    if not isinstance(tag, str):
        raise BadMessage("the message has no 'type' (its wire tag, e.g. \"Ping\")")
    cls = resolve_tag(tag, types)
    fields = dict(value)
    del fields["type"]
    names = set(cls.__struct_fields__)
    unknown = sorted(set(fields) - names)
    if unknown:
        shown = ", ".join(f"$.{name}" for name in unknown)
        expected = ", ".join(cls.__struct_fields__) or "none"
        raise BadMessage(f"{cls.__qualname__}: unknown field {shown} (fields: {expected})")
    try:
        return msgspec.convert(fields, cls)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"{cls.__qualname__}: {exc}") from None


def encode_value(value: Any) -> Any:
    """A reply as JSON-ready builtins (a Message keeps its ``"type"`` tag)."""
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return repr(value)  # a reply msgspec cannot describe: shown, not lost
