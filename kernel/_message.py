"""Messages: frozen, tagged msgspec Structs passed between agents by reference.

In-process a message object travels as-is: the receiver gets the very object the
sender made (no copy, no encode). Immutability (``frozen=True``, enforced by the base
class) is what makes that safe. Across processes a message is encoded with its wire tag,
which defaults to ``f"{module}.{qualname}"`` and can be set per class::

    class DocumentUploaded(Message, tag="doc.uploaded"):
        doc_id: str
"""

from __future__ import annotations

import enum
from typing import Any, dataclass_transform

import msgspec

__all__ = ["DeadLetter", "DeadLetterReason", "Message"]


@dataclass_transform(frozen_default=True, kw_only_default=False, field_specifiers=(msgspec.field,))
class _MessageMeta(msgspec.StructMeta):
    """Gives every Message subclass a stable wire tag and forces immutability."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        **kwargs: Any,
    ) -> _MessageMeta:
        if "tag" not in kwargs:
            kwargs["tag"] = f"{namespace.get('__module__')}.{namespace.get('__qualname__')}"
        if kwargs.get("frozen") is False:
            raise TypeError(f"{name}: kerna messages are immutable; drop frozen=False")
        kwargs["frozen"] = True
        cls: _MessageMeta = super().__new__(mcls, name, bases, namespace, **kwargs)
        return cls


class Message(msgspec.Struct, metaclass=_MessageMeta, frozen=True):
    """Base class for everything agents send: subclass it and declare typed fields.

    Example::

        class Ping(Message):
            n: int

    Subclasses are frozen msgspec Structs with a wire tag (``Ping.__struct_config__.tag``).
    """


class DeadLetterReason(enum.StrEnum):
    """Why a message is dead: the values of ``DeadLetter.reason`` (plain strs too)."""

    HANDLER_FAILED = "handler_failed"
    """Its handler raised (a tell or an event: nobody else would hear of it)."""
    UNKNOWN_AGENT = "unknown_agent"
    """A subscription names an agent type that is not registered."""
    UNHANDLED_MESSAGE = "unhandled_message"
    """An event reached an agent type with no handler for its type."""
    MAILBOX_FULL = "mailbox_full"
    """The mailbox was full and the message could not wait (``reject``, a timer tick,
    a dead letter)."""
    DROPPED_OLDEST = "dropped_oldest"
    """Pushed out of a full ``drop_oldest`` mailbox by a newer message."""
    ACTIVATION_FAILED = "activation_failed"
    """The agent failed to start (``on_start`` or loading its state)."""
    NOT_DELIVERED = "not_delivered"
    """An event whose publisher waited for room, refused when the subscriber's
    activation failed or was fenced meanwhile."""
    SUBSCRIPTION_KEY_FAILED = "subscription_key_failed"
    """A subscription's key function raised or returned something other than a str."""
    LEASE_LOST = "lease_lost"
    """Queued for a stateful agent whose activation lost its claim (the kernel's lease)."""
    KERNEL_STOPPED = "kernel_stopped"
    """Still queued when the kernel stopped."""
    INTERNAL_ERROR = "internal_error"
    """A bug in kerna failed the agent's worker (logged at ERROR)."""


class DeadLetter(Message, tag="kerna.DeadLetter"):
    """A message that could not be delivered or handled.

    Published on the ``kerna.dead_letters`` topic (``Kernel.DEAD_LETTERS``); subscribe an
    agent to observe them. ``message`` is the original object, by reference.

    Attributes:
        target: the agent id (``"Type/key"``) or topic the message was for.
        message: the message itself.
        reason: why it is dead: one of ``DeadLetterReason`` (a ``StrEnum``: compare
            with the member or its str value).
        error: the error text, when there was one.
        correlation_id: the conversation the message belonged to.
        message_id: the dead message's own id.
    """

    target: str
    message: Any
    reason: str
    error: str | None = None
    correlation_id: int = 0
    message_id: int = 0
