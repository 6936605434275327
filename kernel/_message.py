"""Messages: frozen, tagged msgspec Structs passed between agents by reference.

In-process a message object travels as-is: the receiver gets the very object the
sender made (no copy, no encode). Immutability (``frozen=True``, enforced by the base
class) is what makes that safe. Across processes a message is encoded with its wire tag,
which defaults to ``f"{module}.{qualname}"`` and can be set per class::

    class DocumentUploaded(Message, tag="doc.uploaded"):
        doc_id: str

A request that declares its reply type subclasses ``Request[Reply]``; ``ask`` is then
typed end to end and registration checks the handler's return annotation against it::

    class Ping(Request[Pong]):
        n: int
"""

from __future__ import annotations

import enum
import types
import typing
import weakref
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, dataclass_transform

import msgspec

__all__ = ["Askable", "DeadLetter", "DeadLetterReason", "Message", "ReplyT", "Request"]

# The reply type of an ask: ``AgentRef.ask`` and ``BlockingRef.ask`` are overloaded on it
# (``Request[ReplyT]`` -> ``ReplyT``, ``Askable[ReplyT]`` -> ``ReplyT``). ``Request`` and
# ``Askable`` take the covariant twin, so that a ``Request[SubPong]`` is a
# ``Request[Pong]`` (a narrower promised reply is still a Pong).
ReplyT = TypeVar("ReplyT")
_ReplyT_co = TypeVar("_ReplyT_co", covariant=True)


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
        tag = kwargs["tag"]
        if isinstance(tag, str):
            _DEFINED.setdefault(tag, cls)  # the first class defined under a tag keeps it
        return cls


# Every Message class defined in this process, by wire tag (weakly: a class that goes
# away leaves): what a node decodes a tag it has not registered into (kerna._wire_types).
_DEFINED: weakref.WeakValueDictionary[str, type] = weakref.WeakValueDictionary()


def defined_message(tag: str) -> type | None:
    """The Message class defined in this process under ``tag`` (the first, if several
    share it), or None."""
    return _DEFINED.get(tag)


class Message(msgspec.Struct, metaclass=_MessageMeta, frozen=True):
    """Base class for everything agents send: subclass it and declare typed fields.

    Example::

        class Ping(Message):
            n: int

    Subclasses are frozen msgspec Structs with a wire tag (``Ping.__struct_config__.tag``).
    Asking a plain message gives ``Any`` to type checkers; subclass ``Request[Reply]`` to
    declare the reply type.
    """

    if TYPE_CHECKING:
        # For type checkers only (no such method at run time): what ``ask`` returns for
        # this message, read through ``Askable``. ``Request`` narrows it to its reply.
        def _kerna_reply(self) -> Any: ...


class Request(Message, Generic[_ReplyT_co]):
    """A message that declares the type of its reply: subclass ``Request[Reply]``.

    Example::

        class Pong(Message):
            n: int

        class Ping(Request[Pong]):
            n: int

        pong = await ref.ask(Ping(n=1))   # a Pong for mypy and pyright

    A request is a ``Message`` in every other way (frozen, tagged, encoded like any
    message: the reply type is not on the wire). The reply may be any type, not only a
    Message: ``Request[int]``, ``Request[Pong | None]`` (when "no reply" is a valid
    answer), ``Request[Pong | Refused]``. A subclass inherits its base's reply type; its
    handler may still return a subclass of the reply.

    Registration checks each handler of a request against its declared reply (see
    ``build_handler_table``). A plain ``Message`` can still be asked; its reply is
    ``Any``.

    Raises:
        TypeError: at class definition, when a subclass declares a second, different
            reply type (``class FastPing(Ping, Request[FastPong])``): type checkers keep
            the first one they find, so the narrowing would silently not apply.
    """

    if TYPE_CHECKING:

        def _kerna_reply(self) -> _ReplyT_co: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        replies: list[Any] = []
        for reply in _reply_arguments(cls):
            if reply not in replies:
                replies.append(reply)
        if len(replies) > 1:
            shown = " and ".join(f"Request[{type_name(r)}]" for r in replies)
            raise TypeError(
                f"{cls.__qualname__}: a request has one reply type, but it derives from "
                f"{shown}; keep one (type checkers would silently use the first)"
            )


class Askable(Protocol[_ReplyT_co]):
    """A message as ``ask`` sees it, for type checkers: ``Askable[R]`` replies an ``R``.

    A ``Request[R]`` is an ``Askable[R]``; a plain ``Message`` is an ``Askable[Any]``.
    Why a protocol and not just ``Message``: with overloads ``Request[R] -> R`` and
    ``Message -> Any``, mypy types ``x: str = await ref.ask(Ping())`` (a ``Request[Pong]``)
    through the second one when the first fails in that context, so the mistake passes
    as ``Any``. Through ``Askable`` every message keeps its reply type, and the mistake
    is an error.
    """

    def _kerna_reply(self) -> _ReplyT_co: ...


def _reply_arguments(klass: type) -> list[Any]:
    """The type argument of every ``Request[...]`` that ``klass`` derives from.

    Depth first through the bases as written, in order: the order mypy follows to map a
    class onto ``Request[R]``, so the first entry is the reply type checkers see.
    """
    found: list[Any] = []
    for base in vars(klass).get("__orig_bases__", klass.__bases__):
        origin = typing.get_origin(base)
        if origin is Request:
            found.append(typing.get_args(base)[0])
            continue
        parent = base if origin is None else origin
        if isinstance(parent, type) and issubclass(parent, Message):
            found.extend(_reply_arguments(parent))
    return found


def declared_reply(message_type: type) -> Any:
    """The reply type a ``Request`` subclass declares, or ``None`` for a plain message.

    A subclass inherits its base's reply type. The result is the type argument as
    written: a class, a union, a generic alias, a type variable (a generic request), or
    a string / ``ForwardRef`` when it was quoted (``Request["Pong"]``).
    """
    if not issubclass(message_type, Request):
        return None
    replies = _reply_arguments(message_type)
    return replies[0] if replies else None


def type_name(form: Any) -> str:
    """A type as written, for error messages: ``Pong``, ``Pong | None``, ``list[int]``."""
    if form is type(None) or form is None:
        return "None"
    if isinstance(form, type) and not typing.get_args(form):
        return form.__qualname__
    if typing.get_origin(form) in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(form))
    if isinstance(form, typing.ForwardRef):
        return repr(form.__forward_arg__)
    return repr(form).replace("typing.", "")


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
    EXPIRED = "expired"
    """An ask whose asker had given up (timed out or cancelled) when its turn came:
    not run, counted in ``TypeStats.expired``. Kept in the dead-letter store
    (``Kernel.dead_letters``) but not published: its asker already heard."""
    NODE_LOST = "node_lost"
    """A tell for an agent of a lost cluster member that waited past its deadline (or
    the parking bound, ``kerna._cluster_parking``) for the node to answer again or to
    leave the cluster so that the agent could be placed elsewhere."""
    UNDECODABLE = "undecodable"
    """A frame from another node that does not decode (``target`` names the peer, the
    error why: ``kerna._wire.WireErrorReason``); its message is lost."""


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
