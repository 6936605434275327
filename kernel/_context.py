"""``MessageContext``: what a handler can know about the message it handles.

A read-only view over the message's envelope, made when ``self.context`` is read (a
handler that never reads it pays nothing). Middleware (``kerna.plugins``) gets the same
view: around a handler, of the message handled; around a send, of the message sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from ._envelope import EVENT, KIND_NAMES

if TYPE_CHECKING:
    from ._envelope import Envelope
    from ._ids import AgentId

__all__ = ["Kind", "MessageContext"]

Kind = Literal["tell", "ask", "event"]

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class MessageContext:
    """The message being handled (``self.context`` inside a handler).

    Ids are positive 63-bit ints, unique across processes and restarts (a random
    per-process prefix and a counter), so they fit any int column or encoding.

    Attributes:
        sender: the agent that sent it, or None when it came from outside any agent.
        message_id: this message's id.
        correlation_id: the id of the first message of the conversation.
        causation_id: the id of the message whose handler sent this one (0: a root).
        kind: ``"tell"``, ``"ask"`` or ``"event"``.
        topic: the topic it was published on (events), else None.
        headers: metadata that came with it (read-only; empty when none).
        target: the agent it is addressed to (for an event: the topic).
        message: the message itself (by reference: messages are frozen).
    """

    __slots__ = ("_envelope", "_kind", "_loop")

    def __init__(self, envelope: Envelope, loop: asyncio.AbstractEventLoop) -> None:
        self._envelope = envelope
        self._loop = loop
        self._kind = KIND_NAMES[envelope.kind]  # (named once: middleware reads it per message)

    if TYPE_CHECKING:

        @property
        def sender(self) -> AgentId | None: ...
        @property
        def message_id(self) -> int: ...
        @property
        def correlation_id(self) -> int: ...
        @property
        def causation_id(self) -> int: ...
        @property
        def target(self) -> AgentId | str: ...
        @property
        def message(self) -> Any: ...
        @property
        def kind(self) -> Kind: ...

    else:  # read by C getters (no Python frame per read: middleware reads them per message)
        sender = property(attrgetter("_envelope.sender"))
        message_id = property(attrgetter("_envelope.id"))
        correlation_id = property(attrgetter("_envelope.correlation_id"))
        causation_id = property(attrgetter("_envelope.causation_id"))
        target = property(attrgetter("_envelope.target"))
        message = property(attrgetter("_envelope.payload"))
        kind = property(attrgetter("_kind"))

    @property
    def topic(self) -> str | None:
        env = self._envelope
        target = env.target
        if env.kind != EVENT or not isinstance(target, str):
            return None
        return target.partition("\0")[0]  # in a cluster: topic\0Type\0key (_cluster_topics)

    @property
    def headers(self) -> Mapping[str, str]:
        headers = self._envelope.headers
        return _NO_HEADERS if not headers else MappingProxyType(dict(headers))

    def header(self, name: str) -> str | None:
        """The header ``name``, or None (what ``headers.get(name)`` gives, without the
        copy ``headers`` makes)."""
        headers = self._envelope.headers
        return None if not headers else headers.get(name)

    @property
    def deadline(self) -> float | None:
        """The absolute ``loop.time()`` after which nobody waits for the result."""
        return self._envelope.deadline

    def time_left(self) -> float | None:
        """Seconds until the message's deadline (None: no deadline; never negative)."""
        deadline = self._envelope.deadline
        return None if deadline is None else max(0.0, deadline - self._loop.time())

    def __repr__(self) -> str:
        env = self._envelope
        topic = f" topic={self.topic!r}" if self.topic is not None else ""
        return (
            f"<MessageContext {self.kind} {env.id} from {env.sender or 'outside'}"
            f" correlation={env.correlation_id}{topic}>"
        )
