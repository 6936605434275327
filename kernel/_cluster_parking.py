"""Messages for the agents of a member whose node is lost: parked, not failed.

A node killed with SIGKILL stays a member until the store expires its lease (its
``lease_ttl``): until then its agents cannot be placed anywhere else, because its
claims hold them. The asks that were in flight to it fail at once with ``NodeLost``
(``kerna._remote``); a message sent to one of its agents after that is parked here
instead of failing, in order, and goes on when one of two things happens first:

- the member record disappears (the lease expired, or the node deregistered on its
  way out): the cluster places every parked message again (``Cluster``, through
  ``Runtime.deliver``), on a survivor, which activates the agent with its last
  committed state;
- the node answers again (a broken connection to a live node, or a node that was
  frozen past the heartbeat timeout but kept its lease): a probe ask every 0.1 s
  doubling to 1 s finds it, and the parked messages are sent to it, in order, before
  any newer one.

Each parked message is bounded by its own deadline: an ask whose asker gave up
(``AskTimeout``) is dropped; a tell is a dead letter (``DeadLetterReason.NODE_LOST``)
once its deadline passed, or once it waited ``tell_bound`` seconds (three lease TTLs,
at least 10 s). At most ``MAX_PARKED`` messages wait per node; more are refused with
``MailboxFull``.

A node is taken for lost when its transport reports the peer lost
(``Remote.peer_lost``), or when a send to it cannot connect (``ClusterRoute``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._envelope import ASK, Envelope
from ._errors import (
    KernaError,
    KernelStopped,
    MailboxFull,
    NodeLost,
    PeerUnreachable,
    TransportError,
)
from ._ids import AgentId
from ._message import DeadLetterReason, Message

if TYPE_CHECKING:
    from ._remote import Remote
    from ._runtime import Runtime

__all__ = ["MAX_PARKED", "Parking", "Probe"]

log = logging.getLogger("kerna.cluster")

MAX_PARKED = 10_000
"""Messages parked for one lost node beyond which more are refused (``MailboxFull``)."""
PROBE_FIRST = 0.1  # seconds before the first probe, doubling up to PROBE_MAX
PROBE_MAX = 1.0
PROBE_TIMEOUT = 1.0  # a probe not answered in this long: still lost

PROBE_TARGET = AgentId("kerna.cluster", "probe")
"""No agent type has this name: a live node answers the probe with ``UnknownAgent``."""


class Probe(Message, tag="kerna.cluster.Probe"):
    """Asked of a lost node to learn whether it answers again (any answer will do)."""


class Parking:
    """The messages parked for one lost member (see the module docstring).

    Args:
        runtime: this node's runtime.
        remote: this node's link to the others (the probe and the sends go through it).
        node: the lost member's id.
        address: its transport address.
        tell_bound: seconds a tell without a sooner deadline may stay parked.
        done: called once every parked message was sent to the node that answered
            again (the cluster then routes to it directly).
    """

    def __init__(
        self,
        runtime: Runtime,
        remote: Remote,
        node: str,
        address: str,
        tell_bound: float,
        done: Callable[[Parking], None],
    ) -> None:
        self.runtime = runtime
        self.remote = remote
        self.node = node
        self.address = address
        self.tell_bound = tell_bound
        self._done = done
        self._queue: deque[tuple[float, Envelope]] = deque()
        self.parked = 0  # messages parked so far
        self._task: asyncio.Task[None] | None = runtime.loop.create_task(
            self._watch(), name=f"kerna.cluster parking {node}"
        )

    def __len__(self) -> int:
        return len(self._queue)

    def park(self, env: Envelope) -> None:
        """Hold ``env`` until the node answers or its member record is gone.

        Raises:
            MailboxFull: ``MAX_PARKED`` messages already wait for this node.
        """
        if len(self._queue) >= MAX_PARKED:
            target = env.target
            raise MailboxFull(
                f"{MAX_PARKED} messages already wait for lost node {self.node}"
                f" ({self.address}): message to {target} refused",
                target=target if isinstance(target, AgentId) else None,
                capacity=MAX_PARKED,
            )
        self._queue.append((self.runtime.loop.time(), env))
        self.parked += 1

    def release(self) -> list[Envelope]:
        """Stop waiting for the node; the parked messages, in order (to place again)."""
        self._stop()
        envs = [env for _, env in self._queue]
        self._queue.clear()
        return envs

    def close(self) -> None:
        """This node stops: every parked message fails (``KernelStopped``)."""
        for env in self.release():
            self.runtime.not_handled(
                env,
                env.target,
                DeadLetterReason.KERNEL_STOPPED,
                KernelStopped(f"kernel stopped while {env.target} waited for lost {self.node}"),
            )

    def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # -- waiting for the node --------------------------------------------------------

    async def _watch(self) -> None:
        delay = PROBE_FIRST
        while True:
            await asyncio.sleep(delay)
            self._expire()
            if not await self._answers():
                delay = min(delay * 2, PROBE_MAX)
                continue
            log.info("lost node %s answers again: sending %d parked", self.node, len(self))
            if await self._flush():
                self._task = None
                self._done(self)
                return
            delay = PROBE_FIRST

    def _expire(self) -> None:
        """Drop the asks whose askers gave up; dead-letter the tells past their bound."""
        now = self.runtime.loop.time()
        keep: deque[tuple[float, Envelope]] = deque()
        for parked_at, env in self._queue:
            reply = env.reply
            if reply is not None:
                if not reply.done():
                    keep.append((parked_at, env))
                continue  # its asker has its AskTimeout
            deadline = env.deadline
            if now - parked_at < self.tell_bound and (deadline is None or now < deadline):
                keep.append((parked_at, env))
                continue
            self.runtime.undeliverable(
                env,
                env.target,
                DeadLetterReason.NODE_LOST,
                NodeLost(
                    f"{env.target}'s node {self.node} was lost and neither answered again"
                    f" nor left the cluster in {now - parked_at:.3g}s",
                    peer=self.address,
                ),
            )
        self._queue = keep

    async def _answers(self) -> bool:
        """Whether the node answers a probe ask (with anything) in time."""
        rt = self.runtime
        loop = rt.loop
        reply: asyncio.Future[object] = loop.create_future()
        msg_id = next(rt.ids)
        deadline = loop.time() + PROBE_TIMEOUT
        env = Envelope(msg_id, ASK, PROBE_TARGET, Probe(), None, msg_id, 0, deadline, (), reply)
        try:
            async with asyncio.timeout_at(deadline):
                sent = self.remote.send(self.address, env)
                if sent is not None:
                    await sent
                await reply
        except (TransportError, TimeoutError, KernelStopped):  # NodeLost too
            return False
        except KernaError:  # an answer: UnknownAgent, KernelStopped there, ...
            return True
        finally:
            if not reply.done():
                reply.cancel()  # unanswered: failing it later would log it unretrieved
        return True

    async def _flush(self) -> bool:
        """Send the parked messages to the node, in order; newer ones keep parking
        behind them meanwhile. False if it is lost again (the rest stay parked)."""
        queue = self._queue
        while queue:
            parked_at, env = queue.popleft()
            reply = env.reply
            if reply is not None and reply.done():
                continue
            try:
                sent = self.remote.send(self.address, env)
                if sent is not None:
                    await sent
            except PeerUnreachable:
                queue.appendleft((parked_at, env))  # not queued: it stays first
                return False
            except Exception as exc:  # it cannot be encoded, the transport closed
                self.runtime.not_handled(env, env.target, DeadLetterReason.NOT_DELIVERED, exc)
        return True
