"""The envelope: what the kernel wraps around a message on its way to an agent.

An envelope is created once per send (one per publish, shared by every subscriber) and
never copied in-process. ``reply`` is the asker's future; it exists only in-process
(across nodes a reply is routed by ``correlation_id`` instead).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from ._ids import AgentId

__all__ = ["ASK", "EVENT", "TELL", "Envelope"]

TELL = 0
ASK = 1
EVENT = 2
_KIND_NAMES = ("tell", "ask", "event")


class Envelope(msgspec.Struct):
    """Routing data around one message.

    Attributes:
        id: node-unique message id.
        kind: ``TELL``, ``ASK`` or ``EVENT``.
        target: the receiving agent, or the topic for events.
        payload: the message, by reference.
        sender: the agent that sent it, if it was sent from inside a handler.
        correlation_id: id of the first message of the conversation.
        causation_id: id of the message whose handler sent this one (0 at the root).
        deadline: absolute ``loop.time()`` after which nobody waits for the result.
        chain: agents waiting on asks up the current call chain (deadlock detection).
        reply: the asker's future, for asks.
        headers: free-form metadata for middleware (tracing, auth, ...).
    """

    id: int
    kind: int
    target: AgentId | str
    payload: Any
    sender: AgentId | None = None
    correlation_id: int = 0
    causation_id: int = 0
    deadline: float | None = None
    chain: tuple[AgentId, ...] = ()
    reply: asyncio.Future[Any] | None = None
    headers: dict[str, str] | None = None

    @property
    def kind_name(self) -> str:
        return _KIND_NAMES[self.kind]
