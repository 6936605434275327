"""Messages: frozen, tagged msgspec Structs passed between agents by reference.

In-process a message object travels as-is: the receiver gets the very object the
sender made (no copy, no encode). Immutability (``frozen=True``, enforced by the base
class) is what makes that safe. Across processes a message is encoded with its wire tag,
which defaults to ``f"{module}.{qualname}"`` and can be set per class::

    class DocumentUploaded(Message, tag="doc.uploaded"):
        doc_id: str
"""

from __future__ import annotations

from typing import Any, dataclass_transform

import msgspec

__all__ = ["DeadLetter", "Message"]


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


class DeadLetter(Message, tag="kerna.DeadLetter"):
    """A message that could not be delivered or handled.

    Published on the ``kerna.dead_letters`` topic (``Kernel.DEAD_LETTERS``); subscribe an
    agent to observe them. ``message`` is the original object, by reference.

    Attributes:
        target: the agent id (``"Type/key"``) or topic the message was for.
        message: the message itself.
        reason: why it is dead: ``"handler_failed"``, ``"unknown_agent"``,
            ``"unhandled_message"``, ``"mailbox_full"``, ``"dropped_oldest"``,
            ``"activation_failed"`` or ``"kernel_stopped"``.
        error: the error text, when there was one.
        correlation_id: the conversation the message belonged to.
    """

    target: str
    message: Any
    reason: str
    error: str | None = None
    correlation_id: int = 0
