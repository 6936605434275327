"""The envelope: what the kernel wraps around a message on its way to an agent.

An envelope is created once per send (one per publish, shared by every subscriber) and
never copied in-process. ``reply`` is the asker's future; it exists only in-process
(across nodes a reply is routed by the message id instead).

``outgoing`` is the one place that builds an envelope from the context it is sent in:
every send made while a message is handled (tell, ask, publish, dead letter) goes
through it. Only a root (a send from outside any agent, or a timer tick: no context to
carry) may be built directly, and ``AgentRef`` does so on its hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import msgspec

from ._ids import AgentId

__all__ = ["ASK", "EVENT", "KIND_NAMES", "TELL", "Envelope", "outgoing"]

TELL = 0
ASK = 1
EVENT = 2
KIND_NAMES: tuple[Literal["tell"], Literal["ask"], Literal["event"]] = ("tell", "ask", "event")


class Envelope(msgspec.Struct):
    """Routing data around one message (private: handlers see ``MessageContext``).

    Attributes:
        id: the message id (unique across processes, see ``kerna._ids``).
        kind: ``TELL``, ``ASK`` or ``EVENT``.
        target: the receiving agent, or the topic for events.
        payload: the message, by reference.
        sender: the agent that sent it, if it was sent from inside a handler.
        correlation_id: id of the first message of the conversation.
        causation_id: id of the message whose handler sent this one (0 at the root).
        deadline: absolute ``loop.time()`` after which nobody waits for the result.
        chain: agents waiting on asks up the current call chain (deadlock detection).
        reply: the asker's future, for asks.
        headers: metadata that flows down the conversation (tracing, auth, ...).
        queued_at: ``loop.time()`` when a mailbox took it, for a message timing
            samples (``kerna._timing``); -1 otherwise.
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
    headers: Mapping[str, str] | None = None
    queued_at: float = -1.0


def outgoing(
    ids: Iterator[int],
    kind: int,
    target: AgentId | str,
    payload: Any,
    sender: AgentId | None,
    parent: Envelope | None,
    deadline: float | None = None,
    reply: asyncio.Future[Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Envelope:
    """The envelope of a message sent while ``parent`` is being handled (None: a root).

    It continues ``parent``'s conversation: same correlation id, ``parent``'s id as its
    causation id, and ``parent``'s headers (overridden key by key by ``headers``). An
    ask also inherits ``parent``'s deadline when that is sooner, and extends the ask
    chain with ``sender`` (what ``DeadlockError`` detection reads); a tell or an event
    starts no chain: its sender does not wait.
    """
    msg_id = next(ids)
    chain: tuple[AgentId, ...] = ()
    if parent is None:
        if kind == ASK and sender is not None:
            chain = (sender,)
        return Envelope(
            msg_id, kind, target, payload, sender, msg_id, 0, deadline, chain, reply, headers
        )
    inherited = parent.headers
    if headers is None:
        headers = inherited
    elif inherited:
        headers = {**inherited, **headers}
    if kind == ASK:
        chain = parent.chain if sender is None else (*parent.chain, sender)
        limit = parent.deadline
        if limit is not None and (deadline is None or limit < deadline):
            deadline = limit
    return Envelope(
        msg_id, kind, target, payload, sender, parent.correlation_id, parent.id, deadline,
        chain, reply, headers,
    )  # fmt: skip
