"""A cluster node's graceful leave (``kernel.stop()``, SIGTERM to ``kerna node``).

``Cluster.begin_leaving`` (when ``stop`` is called): this node is no home for any
agent from then on, and it keeps taking messages from other nodes
(``Runtime.accepts_inbound``): a live activation here handles them, or they are
forwarded to the agent's next home. ``Departure.leave`` (the first step of the
shutdown): its member record says ``leaving`` (placement skips it), and every local
activation is handed off (``Activation.hand_off``): after its current message and its
deferred replies not yet sent (waited for until the grace ends), what it holds is
forwarded to the agent's next home, then its claim is released (``Departure.hand_off``);
the new home waits for that release before it claims the agent
(``Cluster.wait_for_claim``), and senders keep routing to the holder while its claim
holds, so a sender's messages stay in order across the hand-off. A message still on
its way here when the claim is released is forwarded to the next home as well; a
sender whose watch then routes the agent there holds its newer messages until a marker
it sent behind the older ones, through this node, has reached the next home
(``kerna._cluster_flush``; this node forwards the marker like any message to the
agent, and waits for its answer in ``settle``). After the grace,
``Departure.depart``: it deletes its member record, waits for the asks it forwarded,
and, if messages reached it while it left, lingers until none came for ``LINGER``
seconds, before its transport closes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from ._errors import KernelStopped

if TYPE_CHECKING:
    from ._activation import Activation
    from ._cluster import Cluster

__all__ = ["ANNOUNCE", "LINGER", "Departure"]

log = logging.getLogger("kerna.cluster")

LINGER = 0.25
"""Seconds without a message reaching it that a leaving node waits for, once it
deregistered, before it closes its transport (a node that has not seen it leave yet may
still send to it); only when messages reached it while it left."""
ANNOUNCE = 2.0
"""Seconds a stopping node waits at most for its member record to say it leaves (the
store may be unreachable: the hand-off goes on without it)."""


class Departure:
    """The leave of one node (see the module docstring)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._late = asyncio.Event()  # a message reached this node while it leaves
        self._late_count = 0
        self.deadline = math.inf  # the end of the grace (``leave``)

    async def leave(self, deadline: float) -> None:
        """Mark this node leaving in its member record, so that placement skips it
        (waiting for the watch to show it, at most ``ANNOUNCE`` seconds and not past
        ``deadline``), and hand every local activation off (``Activation.hand_off``:
        it finishes its message, releases its claim, and what it still holds or is
        sent goes to the agent's next home)."""
        cluster = self.cluster
        cluster.begin_leaving()
        self.deadline = deadline
        membership = cluster.membership
        if membership is not None:
            membership.update()
            loop = asyncio.get_running_loop()
            try:
                await cluster.wait_members(
                    lambda ms: any(m.id == cluster.node_id and m.leaving for m in ms),
                    max(0.0, min(deadline - loop.time(), ANNOUNCE)),
                )
            except TimeoutError:
                log.warning(
                    "%s could not announce that it leaves; handing off anyway", cluster.node_id
                )
        acts = list(cluster.runtime.directory.values())
        log.info("cluster member %s leaves: handing off %d agents", cluster.node_id, len(acts))
        for act in acts:
            act.hand_off()

    async def depart(self, deadline: float) -> None:
        """Delete this node's member record, then wait (until ``deadline``) for the asks
        it forwarded: messages that still reach it are forwarded until its transport
        closes (``Runtime.accepts_inbound``)."""
        membership = self.cluster.membership
        if membership is not None:
            await membership.deregister()
        await self.settle(deadline)
        if not self._late_count:
            return
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            self._late.clear()
            try:
                async with asyncio.timeout(min(LINGER, max(0.0, deadline - loop.time()))):
                    await self._late.wait()
            except TimeoutError:
                return  # nothing came for LINGER: the others have seen it leave
            await self.settle(deadline)

    async def hand_off(self, act: Activation) -> None:
        """``act`` (out of the directory) closes while this node leaves: send what it
        still holds (queued messages, parked senders') to the agent's next home, in
        order, wait (until the grace ends) until those sends are queued on their
        connections, and only then release its claim. The new home waits for that
        release before it claims (``Cluster.wait_for_claim``), so these messages are in its
        mailbox before any a sender routes there once the claim is gone."""
        cluster = self.cluster
        rt = cluster.runtime
        if rt.stopped:
            act.abort(KernelStopped(f"kernel stopped before {act.id} could handle them"))
        else:
            sends = [s for env in act.take_to_move() if (s := cluster.redeliver(env)) is not None]
            if sends:
                left = self.deadline - asyncio.get_running_loop().time()
                await asyncio.wait(sends, timeout=None if left == math.inf else max(0.0, left))
        await act.release()

    def seen(self) -> None:
        """A message reached this leaving node (it forwards it)."""
        self._late_count += 1
        self._late.set()

    async def settle(self, deadline: float) -> None:
        """Wait (until ``deadline``) for the asks this leaving node forwarded to be
        answered, so that their askers get the replies through it."""
        remote = self.cluster.remote
        unanswered = [] if remote is None else remote.unanswered()
        if unanswered:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait(unanswered, timeout=timeout)
