"""A sender's switch from an agent's leaving holder to its next home: its newer
messages wait until the older ones it sent through the holder have passed.

A leaving node hands each agent off (``kerna._cluster_leave``) and releases its claim;
a message another node sent it before that, still on the connection (or not yet read)
when the claim goes, reaches it afterwards and is forwarded to the agent's next home.
The sender's watch shows the claim gone meanwhile, and its placement sends its next
message straight to the next home: over another connection, it could arrive first.

So each node remembers, per agent, the other node it last routed the agent's messages
to (``Cluster.route``, on the decision only: a warm send is untouched). When a decision
for the agent changes from a node that is leaving to another (or to this node), the
messages to it are held here (``Flushing``, the route the senders get meanwhile) and a
``Flush`` marker is asked of the agent through the old node, on the same connection
as the messages before it: the old node forwards it behind them, and the node where
they land answers it, once it is in the agent's mailbox order there
(``Cluster.pass_marker``: a node that is not leaving and got it from another node, or
one with a live local activation of the agent). Then the held messages go on, in
order, to the agent's home at that time, before any newer one. (Akka's shard hand-off
buffers at every sender for the whole hand-off; here only a sender whose decision
moves away from a leaving node it sent to waits, for one trip through that node.)

Each sender pays only when it routed to a holder that then left. A marker that is not
answered in ``FLUSH_TIMEOUT`` seconds, or fails (the old node is lost or gone, it is an
older version), lets the held messages go on all the same: order is then not
guaranteed for them; they are counted (``Kernel.delivery_stats().unordered``, the
metric ``kerna_handoff_unordered_total``) and logged. Nothing is
held when the old node is already known lost (its messages here are parked,
``kerna._cluster_parking``), or was not leaving. A node this node saw leaving and then
gone from the members still counts as leaving for ``FLUSH_TIMEOUT`` seconds: the
member watch and the directory watch are two watches, and the first may show it gone
before the second shows its claims released, while it still forwards what reaches it
(after that, a decision that moves from it is not held: its claims are long gone, and
a node that is gone for good would only make the messages wait). At most
``MAX_HELD`` messages wait per agent; more are
refused with ``MailboxFull``. An ask whose asker gave up meanwhile is dropped; this
node's stop fails what waits with ``KernelStopped``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ._envelope import ASK, Envelope
from ._errors import KernelStopped, MailboxFull
from ._failures import describe
from ._message import DeadLetterReason, Message
from ._remote import RemoteRoute

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._ids import AgentId

__all__ = ["FLUSH_TIMEOUT", "MAX_HELD", "Flush", "Flushing", "passed"]

log = logging.getLogger("kerna.cluster")

FLUSH_TIMEOUT = 2.0
"""Seconds a marker may take through the old holder before the held messages go on
without the order guarantee."""
MAX_HELD = 10_000
"""Messages held for one agent beyond which more are refused (``MailboxFull``)."""


class Flush(Message, tag="kerna.cluster.Flush"):
    """Asked of an agent through its old holder, behind the messages sent there before;
    answered (None) where they land (``passed``), never handled by the agent."""


def passed(env: Envelope) -> None:
    """The marker ``env`` is in its agent's mailbox order here: answer it."""
    reply = env.reply
    if reply is not None and not reply.done():
        reply.set_result(None)


class Flushing:
    """The messages to ``target`` held while a marker passes through ``node`` (see the
    module docstring); it has the shape of a route, so senders cache it meanwhile.

    Args:
        cluster: this node's cluster.
        target: the agent.
        node: the leaving node this node routed the agent's messages to.
        address: its transport address.
    """

    __slots__ = ("_cluster", "_held", "_task", "address", "closed", "failure", "node", "target")

    atype = RemoteRoute.atype  # held whatever they are: the destination checks handlers

    def __init__(self, cluster: Cluster, target: AgentId, node: str, address: str) -> None:
        self._cluster = cluster
        self.target = target
        self.node = node
        self.address = address
        self.closed = False
        self.failure = None
        self._held: list[Envelope] = []
        loop = cluster.runtime.loop
        self._task: asyncio.Task[None] | None = loop.create_task(
            self._flush(), name=f"kerna.cluster flush {target} via {node}"
        )

    def put(self, env: Envelope) -> None:
        """Hold ``env`` until the marker passed (or could not).

        Raises:
            MailboxFull: ``MAX_HELD`` messages already wait for this agent.
        """
        if len(self._held) >= MAX_HELD:
            raise MailboxFull(
                f"{MAX_HELD} messages to {self.target} already wait for those sent through"
                f" leaving node {self.node} to pass: message refused",
                target=self.target,
                capacity=MAX_HELD,
            )
        self._held.append(env)

    def take(self) -> list[Envelope]:
        """Stop: the held messages, in order (the route is closed from now on)."""
        self.closed = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        held, self._held = self._held, []
        return held

    def close(self) -> None:
        """This node stops: every held message fails (``KernelStopped``)."""
        runtime = self._cluster.runtime
        for env in self.take():
            runtime.not_handled(
                env,
                env.target,
                DeadLetterReason.KERNEL_STOPPED,
                KernelStopped(f"kernel stopped while {self.target} waited for a hand-off"),
            )

    async def _flush(self) -> None:
        cluster = self._cluster
        remote = cluster.remote
        assert remote is not None
        rt = cluster.runtime
        loop = rt.loop
        reply: asyncio.Future[object] = loop.create_future()
        msg_id = next(rt.ids)
        deadline = loop.time() + FLUSH_TIMEOUT
        env = Envelope(msg_id, ASK, self.target, Flush(), None, msg_id, 0, deadline, (), reply)
        failed: str | None = None
        try:
            async with asyncio.timeout_at(deadline):
                sent = remote.send(self.address, env)  # behind what went there before
                if sent is not None:
                    await sent
                await reply
        except TimeoutError:
            failed = f"not through {self.node} in {FLUSH_TIMEOUT:g}s"
        except Exception as exc:  # lost, gone, stopped there, an older version
            failed = describe(exc)
        finally:
            if not reply.done():
                reply.cancel()  # unanswered: failing it later would log it unretrieved
        cluster.flushed(self, failed)
