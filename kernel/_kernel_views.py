"""The Kernel's read-only views and the dead-letter store's API: counters, timings,
the registered types, the transport's counters, dead letters and their replay.

A mixin of ``Kernel`` (``kerna._kernel``), kept apart so that the facade stays about
starting, stopping, registering and sending; everything here reads the ``Runtime``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import msgspec

from ._agent import Agent
from ._dead_letters import DeadLetterRecord, DeadLetterStats, ReplayResult, replay
from ._delivery_order import DeliveryStats
from ._message import Message
from ._registry import TypeStats, type_name
from ._runtime import RUNNING, Runtime
from ._timing import TypeTimings

if TYPE_CHECKING:
    from ._kernel import Kernel

__all__ = ["KernelStats", "KernelViews"]


class KernelStats(msgspec.Struct):
    """A snapshot of the kernel's counters (``Kernel.stats()``).

    Attributes:
        types: per registered agent type name, its counters.
        dead_letters: all dead letters, including those for unknown agent types.
        running: agent workers running right now.
    """

    types: dict[str, TypeStats]
    dead_letters: int
    running: int


def _tag_of(message_type: type[Message] | str) -> str:
    if isinstance(message_type, str):
        return message_type
    tag = message_type.__struct_config__.tag
    return tag if isinstance(tag, str) else message_type.__qualname__


class KernelViews:
    """What a ``Kernel`` tells about itself (see the module docstring)."""

    _runtime: Runtime

    def stats(self) -> KernelStats:
        """A snapshot of per-agent-type counters, queue depths, handlers in flight and
        dead letters (``TypeStats``)."""
        rt = self._runtime
        queued: dict[str, int] = dict.fromkeys(rt.types, 0)
        in_flight: dict[str, int] = dict.fromkeys(rt.types, 0)
        for act in rt.directory.values():
            if act.mailbox or act.waiters:
                queued[act.atype.name] += act.queued()
            if act.handling():
                in_flight[act.atype.name] += 1
        types = {
            name: msgspec.structs.replace(
                atype.stats,
                queued=queued[name],
                in_flight=in_flight[name],
                pending=queued[name] + in_flight[name],
            )
            for name, atype in rt.types.items()
        }
        running = rt.busy - len(rt.tasks)  # kernel tasks are not agents
        return KernelStats(types=types, dead_letters=rt.dead_letters, running=running)

    def dead_letters(
        self,
        *,
        reason: str | None = None,
        agent_type: type[Agent] | str | None = None,
        message_type: type[Message] | str | None = None,
        limit: int | None = None,
    ) -> list[DeadLetterRecord]:
        """The dead letters this kernel keeps (``dead_letters_kept``), oldest first.

        Every dead letter is kept, whoever subscribes to ``DEAD_LETTERS``: tells and
        events that were not handled, asks that failed before their handler ran (their
        asker got the error) and asks that expired in a mailbox (``"expired"``). See
        ``kerna._dead_letters`` for the rules.

        Args:
            reason: only this ``DeadLetterReason``.
            agent_type: only those for agents of this type (a class or a name).
            message_type: only messages of this type (a class or its wire tag).
            limit: only the newest ``limit`` of them.

        Raises:
            ValueError: ``limit`` is negative.
        """
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        return self._runtime.dead_letter_store.select(
            reason=None if reason is None else str(reason),
            agent_type=None if agent_type is None else type_name(self._runtime.types, agent_type),
            message_type=None if message_type is None else _tag_of(message_type),
            limit=limit,
        )

    def dead_letter_stats(self) -> DeadLetterStats:
        """The dead-letter store's counters: kept, capacity, evicted, recorded by reason."""
        return self._runtime.dead_letter_store.stats()

    async def replay_dead_letters(
        self,
        *,
        reason: str | None = None,
        agent_type: type[Agent] | str | None = None,
        message_type: type[Message] | str | None = None,
        seqs: list[int] | None = None,
    ) -> ReplayResult:
        """Send the kept dead letters matching every given filter to their agents again.

        Each message goes again, in the order it died, as a new tell from outside any
        agent (a new message id and conversation). An ask is replayed as a tell: its
        asker already got its error and waits no more, so the handler's reply is
        dropped. A record leaves the store once its resend is accepted; a message that
        fails again is a new dead letter. Records that cannot be replayed (their target
        is not one agent: a subscription whose key failed, an undecodable frame) or
        whose resend is refused stay, and are named in the result.

        Args:
            reason, agent_type, message_type: as ``dead_letters``.
            seqs: only the records with these ``seq`` numbers.

        Raises:
            KernelStopped: the kernel is not running.
        """
        rt = self._runtime
        if rt.phase is not RUNNING:
            raise rt.refusal("no dead letter replayed")
        store = rt.dead_letter_store
        records = store.select(
            reason=None if reason is None else str(reason),
            agent_type=None if agent_type is None else type_name(self._runtime.types, agent_type),
            message_type=None if message_type is None else _tag_of(message_type),
            seqs=seqs,
        )
        return await replay(cast("Kernel", self), store, records)  # a mixin of Kernel only

    def timings(self) -> dict[str, TypeTimings]:
        """Per agent type, its mailbox wait and handling time histograms (a snapshot);
        empty unless the kernel times messages (``Kernel(timing=N)``)."""
        return {
            name: atype.timing.snapshot()
            for name, atype in self._runtime.types.items()
            if atype.timing is not None
        }

    def agent_classes(self) -> dict[str, type[Agent]]:
        """The registered agent classes, by type name (a copy)."""
        return {name: atype.cls for name, atype in self._runtime.types.items()}

    def message_types(self) -> dict[str, type[Message]]:
        """The message types the registered agent types handle, by wire tag (read-only):
        what a node's admin API decodes a JSON message into (``kerna ask``)."""
        found: dict[str, type[Message]] = {}
        for atype in self._runtime.types.values():
            for message_type in atype.handled_types():
                if issubclass(message_type, Message):
                    tag = message_type.__struct_config__.tag
                    if isinstance(tag, str):
                        found.setdefault(tag, message_type)
        return found

    def delivery_stats(self) -> DeliveryStats:
        """What the numbers on deliveries from other nodes showed (read-only): ``gaps``,
        deliveries sent here that never arrived (lost with a connection: delivery is at
        most once, never duplicated), and ``out_of_order`` (a duplicate or reordering;
        always 0 unless there is a bug), in total and per peer, and in a cluster
        ``unordered`` (messages held after a hand-off and sent on without the order
        guarantee). All 0 without a transport."""
        runtime = self._runtime
        remote = runtime.remote
        stats = DeliveryStats() if remote is None else remote.delivery_stats()
        cluster = runtime.cluster
        if cluster is not None and cluster.flushes.unordered:
            stats = msgspec.structs.replace(stats, unordered=cluster.flushes.unordered)
        return stats

    def transport_stats(self) -> dict[str, int]:
        """The transport's counters (read-only; e.g. tcp's ``frames_written``); empty
        without a transport or when it keeps none."""
        remote = self._runtime.remote
        stats = None if remote is None else getattr(remote.transport, "stats", None)
        return dict(stats()) if callable(stats) else {}
