"""A sender's switch from an agent's leaving holder to its next home: its newer
messages wait until the older ones it sent through the holder have passed.

A leaving node hands each agent off (``kerna._cluster_leave``) and releases its claim;
a message another node sent it before that, still on the connection (or not yet read)
when the claim goes, reaches it afterwards and is forwarded to the agent's next home.
The sender's watch shows the claim gone meanwhile, and its placement sends its next
message straight to the next home: over another connection, it could arrive first.

So each node remembers, per agent, the other node it last routed the agent's messages
to (``Flushes.routed``, on ``Cluster.route``'s decision only: a warm send is
untouched). When a decision for the agent changes from a node that is leaving to
another (or to this node), the messages to it are held here (``Flushing``, the route
the senders get meanwhile) and a ``Flush`` marker is asked of the agent through the
old node, on the same connection as the messages before it: the old node forwards it
behind them, and the node where they land answers it, once it is in the agent's
mailbox order there (``Cluster.pass_marker``: a node that is not leaving and got it
from another node, or one with a live local activation of the agent). Then the held
messages go on, in order, to the agent's home at that time, before any newer one.
(Akka's shard hand-off buffers at every sender for the whole hand-off; here only a
sender whose decision moves away from a leaving node it sent to waits, for one trip
through that node.)

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
import math
from typing import TYPE_CHECKING

from ._envelope import ASK, Envelope
from ._errors import KernelStopped, MailboxFull
from ._failures import describe
from ._message import DeadLetterReason, Message
from ._remote import RemoteRoute

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._ids import AgentId

__all__ = ["FLUSH_TIMEOUT", "MAX_HELD", "Flush", "Flushes", "Flushing", "passed"]

log = logging.getLogger("kerna.cluster")

FLUSH_TIMEOUT = 2.0
"""Seconds a marker may take through the old holder before the held messages go on
without the order guarantee."""
MAX_HELD = 10_000
"""Messages held for one agent beyond which more are refused (``MailboxFull``)."""
SENT_TO = 65_536
"""Agents whose last remote route a node remembers at most (then it forgets them all)."""


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
        flushes: this node's record of the agents' last routes (told when it is done).
        target: the agent.
        node: the leaving node this node routed the agent's messages to.
        address: its transport address.
    """

    __slots__ = (
        "_cluster", "_flushes", "_held", "_task", "address", "closed", "failure", "node", "target",
    )  # fmt: skip

    atype = RemoteRoute.atype  # held whatever they are: the destination checks handlers

    def __init__(self, flushes: Flushes, target: AgentId, node: str, address: str) -> None:
        self._flushes = flushes
        self._cluster = cluster = flushes.cluster
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
        self._flushes.flushed(self, failed)


class Flushes:
    """Per agent, the other node this node last routed its messages to, and the agents
    whose messages wait meanwhile in a ``Flushing`` (see the module docstring).

    Args:
        cluster: this node's cluster.
    """

    __slots__ = ("_flushing", "_left", "_sent_to", "cluster", "unordered")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        # Per agent, the other node its messages were last routed to (cold decisions
        # only), and the agents whose messages wait for a marker through a leaving one.
        self._sent_to: dict[AgentId, str] = {}
        self._flushing: dict[AgentId, Flushing] = {}
        # Members seen leaving, by id -> (address, when this node saw them gone from the
        # member set, inf while they are in it): its member watch may show a node gone
        # before its directory watch shows that node's claims released, and such a node
        # may still forward what reaches it (``_hold``: for ``FLUSH_TIMEOUT`` after).
        self._left: dict[str, tuple[str, float]] = {}
        self.unordered = 0  # held messages sent on without the order guarantee

    def held(self, target: AgentId) -> Flushing | None:
        """The ``Flushing`` that holds ``target``'s messages now, if any."""
        flushing = self._flushing
        return flushing.get(target) if flushing else None

    def routed(self, target: AgentId, node: str) -> Flushing | None:
        """``target``'s messages go to ``node`` now (a cold decision): remember it if
        that is another node; if it moves them away from a leaving node they went to,
        the ``Flushing`` that holds them until those sent there passed (``_hold``)."""
        sent_to = self._sent_to
        sent = sent_to.get(target)
        if sent is not None and sent != node:
            held = self._hold(target, sent)
            if held is not None:
                return held
        if node != self.cluster.node_id and sent != node:
            if len(sent_to) >= SENT_TO:
                sent_to.clear()  # bounded: a switch after this is not held (rare, logged)
                log.info("%s forgot where it routed %d agents", self.cluster.node_id, SENT_TO)
            sent_to[target] = node
        return None

    def members_changed(self) -> None:
        """The member set changed: follow the members that leave, and forget the ones
        gone longer than ``FLUSH_TIMEOUT`` ago."""
        cluster = self.cluster
        membership = cluster.membership
        if membership is None:
            return
        left = self._left
        now = cluster.runtime.loop.time()
        present = set()
        for seen in membership.members():
            present.add(seen.id)
            if seen.leaving:
                left[seen.id] = (seen.address, math.inf)
            elif seen.id in left:
                del left[seen.id]  # back (restarted under the same id)
        for node, (address, gone) in list(left.items()):
            if node not in present:
                if gone == math.inf:
                    left[node] = (address, now)
                elif now - gone > FLUSH_TIMEOUT:
                    del left[node]

    def flushed(self, flushing: Flushing, failed: str | None) -> None:
        """``flushing``'s marker passed (``failed`` None) or could not: send what it
        held on, in order, to ``target``'s home now, before any newer message."""
        target = flushing.target
        if self._flushing.get(target) is flushing:
            del self._flushing[target]
        if self._sent_to.get(target) == flushing.node:
            del self._sent_to[target]
        envs = [env for env in flushing.take() if env.reply is None or not env.reply.done()]
        if failed is not None and envs:
            self.unordered += len(envs)
            log.info(
                "%s: sent on %d held message(s) without waiting for those sent through"
                " %s (%s): their order after those is not guaranteed",
                target,
                len(envs),
                flushing.node,
                failed,
            )
        for env in envs:
            self.cluster.redeliver(env)

    def close(self) -> None:
        """This node stops: every held message fails (``Flushing.close``)."""
        flushing, self._flushing = self._flushing, {}
        for held in flushing.values():
            held.close()

    def _hold(self, target: AgentId, sent: str) -> Flushing | None:
        """``target``'s messages went to ``sent`` and go elsewhere now: if ``sent`` is a
        leaving member (it hands the agent off), or one seen leaving that has left the
        members since (it may still be forwarding what reached it), hold them until
        what went there passed (``Flushing``); else forget it (None: nothing to wait
        for, or nobody to ask: a member that was not leaving, or a lost node whose
        messages here are parked and placed again once it is gone, would only make them
        wait for the marker's timeout)."""
        cluster = self.cluster
        membership, remote = cluster.membership, cluster.remote
        member = None if membership is None else membership.get(sent)
        address: str | None = None
        if member is not None:
            if member.leaving:
                address = member.address
        elif (left := self._left.get(sent)) is not None and (
            cluster.runtime.loop.time() - left[1] <= FLUSH_TIMEOUT
        ):
            address = left[0]  # gone from the members just now: it may still forward
        lost = cluster.lost.get(sent) is not None
        if address is None or lost or remote is None or cluster.closing:
            del self._sent_to[target]
            return None
        held = self._flushing[target] = Flushing(self, target, sent, address)
        log.debug("%s: its messages wait for what was sent through leaving %s", target, sent)
        return held
