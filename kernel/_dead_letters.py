"""The dead-letter store: the last dead letters of one kernel, for inspection and replay.

Every message the kernel counts as a dead letter (``TypeStats.dead_letters``, the
``DEAD_LETTERS`` topic) and every ask that expired in a mailbox (``TypeStats.expired``)
is kept here as a ``DeadLetterRecord``, whoever subscribes to the topic. The store is
bounded (``Kernel(dead_letters_kept=N)``, 1000 by default): the oldest record is
evicted for a new one, and evictions are counted, so that ``kept + evicted`` is every
dead letter recorded. A dead letter about a dead letter (a ``DeadLetter`` event that
could not reach its subscriber) is not kept: the original is.

Replay (``Kernel.replay_dead_letters``) sends a record's message again to the agent it
was for, as a new tell from outside any agent (a fresh message id and correlation id):
an ask's asker is gone (it already got its error), so a replayed ask is a tell and its
reply is dropped. A record is removed once its resend is accepted; a resend that is
refused (the kernel stopping, an unknown type, a full ``reject`` mailbox) leaves it in
the store, named in the result. A record whose target is not one agent (an event for a
subscription whose key function failed, a frame that did not decode) cannot be
replayed and stays.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from ._envelope import KIND_NAMES
from ._failures import describe
from ._ids import AgentId
from ._message import DeadLetter

if TYPE_CHECKING:
    from ._envelope import Envelope
    from ._kernel import Kernel

__all__ = ["DeadLetterRecord", "DeadLetterStats", "DeadLetterStore", "ReplayResult"]


class DeadLetterRecord(msgspec.Struct, frozen=True):
    """One dead letter kept by the kernel (``Kernel.dead_letters()``).

    Attributes:
        seq: its number in this kernel's store (increasing; what replay selects by).
        at: when it became dead (``time.time()``).
        target: the agent id (``"Type/key"``), topic or peer it was for.
        agent: the target as an ``AgentId`` when it is one agent, else None.
        reason: a ``DeadLetterReason`` value.
        kind: ``"tell"``, ``"ask"`` or ``"event"``.
        message: the message itself, by reference (None for a frame that did not
            decode).
        message_type: the message's wire tag (``""`` when there is no message).
        error: the error text, when there was one.
        message_id: the dead message's id.
        correlation_id: the conversation it belonged to.
    """

    seq: int
    at: float
    target: str
    agent: AgentId | None
    reason: str
    kind: str
    message: Any
    message_type: str
    error: str | None
    message_id: int
    correlation_id: int

    @property
    def agent_type(self) -> str | None:
        """The agent type of the target, when it is one agent."""
        agent = self.agent
        return None if agent is None else agent.type


class DeadLetterStats(msgspec.Struct, frozen=True):
    """The store's counters (``Kernel.dead_letter_stats()``).

    Attributes:
        kept: records in the store now.
        capacity: how many it keeps at most.
        evicted: records pushed out by newer ones.
        recorded: every dead letter recorded since the kernel was created, by reason
            (evicted and replayed ones included).
    """

    kept: int
    capacity: int
    evicted: int
    recorded: dict[str, int]


class ReplayResult(msgspec.Struct, frozen=True):
    """What ``Kernel.replay_dead_letters`` did, by record ``seq``.

    Attributes:
        replayed: records whose message was sent again (and left the store).
        skipped: records that cannot be replayed (no single target agent, no message),
            with why; they stay in the store.
        failed: records whose resend was refused, with the error; they stay.
    """

    replayed: list[int]
    skipped: dict[int, str]
    failed: dict[int, str]


def _tag(message: Any) -> str:
    if message is None:
        return ""
    config = getattr(type(message), "__struct_config__", None)
    tag = getattr(config, "tag", None)
    return tag if isinstance(tag, str) else type(message).__qualname__


class DeadLetterStore:
    """The bounded store of one kernel (see the module docstring).

    Args:
        capacity: records kept at most (0 keeps none, still counting them).

    Raises:
        ValueError: ``capacity`` is negative.
        TypeError: ``capacity`` is not an int.
    """

    __slots__ = ("_records", "_seq", "capacity", "evicted", "recorded")

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"dead_letters_kept must be an int >= 0, got {capacity!r}")
        if capacity < 0:
            raise ValueError(f"dead_letters_kept must be an int >= 0, got {capacity!r}")
        self.capacity = capacity
        self._records: deque[DeadLetterRecord] = deque()
        self._seq = 0
        self.evicted = 0
        self.recorded: dict[str, int] = {}

    def add(
        self, env: Envelope, target: AgentId | str, reason: str, error: BaseException | None
    ) -> None:
        """Record ``env`` as dead for ``reason`` (never raises on a message's fault)."""
        message = env.payload
        if isinstance(message, DeadLetter):
            return  # the original message is recorded already
        reason = str(reason)
        self.recorded[reason] = self.recorded.get(reason, 0) + 1
        if self.capacity == 0:
            self.evicted += 1
            return
        self._seq += 1
        record = DeadLetterRecord(
            seq=self._seq,
            at=time.time(),
            target=str(target),
            agent=target if isinstance(target, AgentId) else None,
            reason=reason,
            kind=KIND_NAMES[env.kind],
            message=message,
            message_type=_tag(message),
            error=None if error is None else describe(error),
            message_id=env.id,
            correlation_id=env.correlation_id,
        )
        records = self._records
        if len(records) >= self.capacity:
            records.popleft()
            self.evicted += 1
        records.append(record)

    def select(
        self,
        *,
        reason: str | None = None,
        agent_type: str | None = None,
        message_type: str | None = None,
        seqs: Iterable[int] | None = None,
        limit: int | None = None,
    ) -> list[DeadLetterRecord]:
        """The records matching every given filter, oldest first (the newest ``limit``
        of them when ``limit`` is given)."""
        wanted = None if seqs is None else set(seqs)
        found = [
            r
            for r in self._records
            if (reason is None or r.reason == reason)
            and (agent_type is None or r.agent_type == agent_type)
            and (message_type is None or r.message_type == message_type)
            and (wanted is None or r.seq in wanted)
        ]
        if limit is not None:
            found = found[-limit:] if limit else []
        return found

    def remove(self, seqs: set[int]) -> None:
        """Drop the records numbered ``seqs`` (replayed)."""
        if seqs:
            self._records = deque(r for r in self._records if r.seq not in seqs)

    def stats(self) -> DeadLetterStats:
        return DeadLetterStats(
            kept=len(self._records),
            capacity=self.capacity,
            evicted=self.evicted,
            recorded=dict(self.recorded),
        )


async def replay(
    kernel: Kernel, store: DeadLetterStore, records: list[DeadLetterRecord]
) -> ReplayResult:
    """Send each record's message again as a tell to its agent (module docstring)."""
    replayed: list[int] = []
    skipped: dict[int, str] = {}
    failed: dict[int, str] = {}
    for record in records:
        agent = record.agent
        if agent is None:
            skipped[record.seq] = f"its target {record.target!r} is not one agent"
            continue
        if record.message is None:
            skipped[record.seq] = "its message was lost (it did not decode)"
            continue
        try:
            await kernel.ref(agent.type, agent.key).tell(record.message)
        except Exception as exc:
            failed[record.seq] = describe(exc)
            continue
        replayed.append(record.seq)
    store.remove(set(replayed))
    return ReplayResult(replayed=replayed, skipped=skipped, failed=failed)
