"""What comes in from other nodes: frames decoded and delivered to agents here.

The transport hands each frame a peer sent to ``Inbound.on_frame``. A reply completes
the ask waiting on this node (``Remote.replied``); a delivery frame is decoded into an
envelope and handed to ``Runtime.deliver`` (or straight to the activation a previous
one reached: a route cache per target, as a ref keeps), exactly as a local send; a
batch frame's items are delivered in order, the first the whole way and the rest into
the same mailbox at once as far as it has room (``kerna._send_batch``). An ask's reply
future is a ``RemoteReply``: completing it sends the reply back to the peer it came
from, never to an address a frame names.

What cannot be delivered here (an unknown agent type, no handler, a full ``reject``
mailbox, a stopping kernel, a frame that does not decode) goes back to a remote asker
as an error reply, and is a dead letter otherwise, logged (within a budget) and
counted by reason.

Flow control: a delivery that finds a ``wait`` mailbox full is parked on it, in order;
past ``PAUSE_AT`` parked deliveries from one peer, ``on_frame`` returns a future the
transport waits on before it hands over more from that peer (tcp stops reading it).
A transport that cannot pause one peer (nats) gets ``MailboxFull`` refusals past
``MAX_PARKED``. Deliveries are numbered per peer (``kerna._delivery_order``): the
numbers show what was lost on the way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ._delivery_order import DeliveryOrder
from ._envelope import ASK, KIND_NAMES, TELL, Envelope
from ._errors import (
    ActivationFailed,
    KernelStopped,
    MailboxFull,
    UnhandledMessage,
    UnknownAgent,
)
from ._failure_log import LogBudget
from ._failures import describe
from ._ids import AgentId
from ._message import DeadLetterReason
from ._remote_routes import LocalRoute, RemoteReply, takes
from ._runtime import RUNNING
from ._send_batch import MAX_ITEMS
from ._wire import Batch, Reply, WireError

if TYPE_CHECKING:
    from ._remote import Remote

__all__ = ["MAX_PARKED", "PAUSE_AT", "Inbound"]

log = logging.getLogger("kerna.remote")

# The dead-letter reason of a message from another node refused by this kernel.
_REASONS: dict[type[BaseException], DeadLetterReason] = {
    UnknownAgent: DeadLetterReason.UNKNOWN_AGENT,
    UnhandledMessage: DeadLetterReason.UNHANDLED_MESSAGE,
    MailboxFull: DeadLetterReason.MAILBOX_FULL,
    ActivationFailed: DeadLetterReason.ACTIVATION_FAILED,
    KernelStopped: DeadLetterReason.KERNEL_STOPPED,
}

_LOCAL_ROUTES = 10_000  # cached routes of local targets, then the cache starts afresh
PAUSE_AT = 64
"""Deliveries from one peer parked on full ``wait`` mailboxes at which this node asks
the transport to take no more from that peer until they are all admitted."""
MAX_PARKED = 10_000
"""Parked deliveries from one peer beyond which more are refused with ``MailboxFull``
(a transport that cannot pause one peer, ``Transport.pauses = False``: nats)."""


class Inbound:
    """One ``Remote``'s receiving side (see the module docstring).

    Attributes:
        frames_in: frames received so far (``Remote`` tells hot peers by it).
        order: what the numbers on deliveries from each peer showed.
    """

    def __init__(self, remote: Remote) -> None:
        self._remote = remote
        self.runtime = remote.runtime
        self.codec = remote.codec
        self._replied = remote.replied
        self.frames_in = 0
        self.order = DeliveryOrder()
        self._log_budget = LogBudget(time.monotonic)  # refused frames logged, per peer
        self._compared: set[str] = set()  # peers whose schemas were compared
        # Per local target of messages from other nodes, its cached route (what a ref
        # keeps): Runtime.deliver then skips the directory lookup for a live agent.
        self._local_routes: dict[Any, LocalRoute] = {}
        # Flow control, per peer: deliveries parked on full mailboxes, and the future
        # the transport waits on while that peer is paused.
        self._parked: dict[str, int] = {}
        self._resume: dict[str, asyncio.Future[None]] = {}

    def release(self) -> None:
        """The kernel stops: a transport paused on a peer reads it again (what it hands
        over is refused as the kernel's stop says)."""
        for resume in self._resume.values():
            if not resume.done():
                resume.set_result(None)
        self._resume.clear()

    def _compare_schemas(self, peer: str) -> None:
        """Compare what ``peer`` sent about its schemas (its handshake or probe) with
        ours, once per peer (``kerna._schema_exchange``)."""
        self._compared.add(peer)
        self._remote.met(peer)

    def on_frame(self, peer: str, frame: bytes) -> asyncio.Future[None] | None:
        """A frame from ``peer``: a reply, or a delivery; returns the future the
        transport waits on before it hands over more from ``peer`` (flow control)."""
        self.frames_in += 1  # (Remote._hot_peer)
        if peer not in self._compared:
            self._compare_schemas(peer)
        try:
            decoded = self.codec.decode(frame, peer)
        except WireError as exc:
            self._refused(peer, exc)
            return None
        if isinstance(decoded, Reply):
            self._replied(decoded)
            return None
        if isinstance(decoded, Batch):
            return self._on_batch(peer, decoded)
        seq = decoded.seq
        if seq:  # numbered: the next one from this peer, or a gap (or a bug) counted
            seen = self.order.last.get(peer)
            if seen is not None and seq == seen[1] + 1 and seen[0] == decoded.epoch:
                seen[1] = seq
            else:
                self.order.unexpected(peer, decoded.epoch, seq)
        # A delivery (handled here, not in a method of its own: this runs per frame).
        # The clock is read only for a deadline (a tell has none).
        env = decoded.envelope(0.0 if decoded.remaining is None else self.runtime.loop.time())
        # The reply goes back to the node the ask came from (``peer``), never to an
        # address the frame names: a hostile frame must not make this node connect
        # elsewhere. (Asks forwarded through another node come with the cluster.)
        if env.kind == ASK and decoded.reply_to is not None:
            env.reply = RemoteReply(self._remote, peer, env.id, type(env.payload), env.deadline)
        target = env.target
        holder = self._local_routes.get(target)
        if holder is None:
            holder = self._holder(target)
        return self._admit(peer, env, holder)

    def _on_batch(self, peer: str, batch: Batch) -> asyncio.Future[None] | None:
        """A batch frame from ``peer``: each item delivered as its own delivery frame
        would be, in order (``kerna._wire_frames``)."""
        envelopes = batch.envelopes
        seq = batch.seq
        if seq:  # the items are numbered from seq on
            order = self.order
            seen = order.last.get(peer)
            if seen is None or seq != seen[1] + 1 or seen[0] != batch.epoch:
                order.unexpected(peer, batch.epoch, seq)
                seen = order.last[peer]
            seen[1] = max(seen[1], seq + len(envelopes) - 1)
        rt = self.runtime
        target = batch.target
        holder = self._local_routes.get(target)
        if holder is None:
            holder = self._holder(target)
        if batch.kind == ASK and batch.reply_to is not None:  # replies go to peer (above)
            for env in envelopes:
                if isinstance(env, Envelope):
                    env.reply = RemoteReply(
                        self._remote, peer, env.id, type(env.payload), env.deadline
                    )
        pause = None
        warm = False  # the route deliver chose takes the batch's messages (as _admit checks)
        route: Any = None
        start = 0
        if not batch.refused:  # the common case: the first goes the whole way, the
            first = envelopes[0]  # rest into its mailbox at once, as far as it has room
            assert isinstance(first, Envelope)
            pause = self._admit(peer, first, holder)
            route = holder.route
            warm = takes(route, first, rt)
            start = 1
            put_many = getattr(route, "put_many", None)  # (an activation here)
            if warm and pause is None and not self._parked and put_many is not None:
                start += put_many(envelopes, 1)
        for env in envelopes[start:] if start else envelopes:
            if isinstance(env, WireError):
                self._refused(peer, env)
                continue
            if warm and not self._parked:  # (every item has the batch's one message type)
                try:
                    pending = route.put(env)
                except Exception as exc:  # a full mailbox, a failed start
                    self._not_delivered(env, exc)
                    warm = False  # the next one goes the whole way (_admit)
                    continue
                if pending is None:
                    continue
                waiting = self._park(peer, env, pending, 0)
            else:
                waiting = self._admit(peer, env, holder)
                route = holder.route
                warm = takes(route, env, rt)
            if waiting is not None:
                pause = waiting
        if pause is None:
            mailbox = getattr(holder.route, "mailbox", None)
            if mailbox is not None and len(mailbox) + MAX_ITEMS > holder.route.atype.capacity:
                # The next batch might not fit: let the agent's worker run first (the
                # transport reads nothing more from this peer until the next loop pass)
                # rather than park each message on a full mailbox.
                pause = rt.loop.create_future()
                rt.loop.call_soon(_turn_over, pause)
        return pause

    def _holder(self, target: AgentId | str) -> LocalRoute:
        """A route cache slot for ``target`` (a new one)."""
        if len(self._local_routes) >= _LOCAL_ROUTES:
            self._local_routes.clear()
        holder = self._local_routes[target] = LocalRoute()
        return holder

    def _admit(self, peer: str, env: Envelope, holder: LocalRoute) -> asyncio.Future[None] | None:
        """Deliver ``env`` from ``peer`` here; returns the future the transport waits
        on before it hands over more from ``peer`` (flow control)."""
        rt = self.runtime
        if rt.phase is not RUNNING and not rt.accepts_inbound():
            self._not_delivered(env, rt.refusal(f"{type(env.payload).__qualname__} from {peer}"))
            return None
        parked = self._parked.get(peer, 0)
        if parked >= MAX_PARKED:  # the transport did not pause the peer: refuse more
            self._not_delivered(env, self._flooded(env, peer, parked))
            return None
        route = holder.route
        try:
            if (  # warm: the route deliver chose last time still takes it (as a ref does)
                route is not None
                and not route.closed
                and route.failure is None
                and type(env.payload) in route.atype.handlers
            ):
                pending = route.put(env)
            else:
                pending = rt.deliver(env, holder)
        except Exception as exc:  # unknown agent, no handler, full mailbox, failed start
            self._not_delivered(env, exc)
            return None
        if pending is None:
            return None
        return self._park(peer, env, pending, parked)

    def _park(
        self, peer: str, env: Envelope, pending: Awaitable[None], parked: int
    ) -> asyncio.Future[None] | None:
        """A full ``wait`` mailbox: the envelope waits in its queue, in order; count it
        against the peer and, past PAUSE_AT, have the transport stop reading it."""
        self._parked[peer] = parked + 1
        future = asyncio.ensure_future(pending)
        future.add_done_callback(lambda done: self._admitted(peer, env, done))
        if parked + 1 < PAUSE_AT:
            return None
        resume = self._resume.get(peer)
        if resume is None:
            resume = self._resume[peer] = self.runtime.loop.create_future()
        return resume

    def _refused(self, peer: str, error: WireError) -> None:
        """A frame that does not decode (counted per reason by the codec): its asker
        gets the error back; a reply that does not decode fails the ask it answers;
        anything else is a dead letter."""
        skipped = self._log_budget.allow(peer)
        if skipped is not None:
            note = f" ({skipped} earlier refusals from {peer} were not logged)" if skipped else ""
            log.warning("frame from %s refused: %s%s", peer, error, note)
        reply_to = error.reply_to
        if error.is_reply:
            self._remote.fail_ask(error.message_id, error)
        elif reply_to is not None and error.message_id:
            # To the node it came from: never to an address a frame names (a hostile
            # frame must not make this node connect elsewhere).
            self._remote.send_error(peer, error.message_id, error)
        else:
            lost = Envelope(error.message_id, TELL, f"frame from {peer}", None)
            self.runtime.undeliverable(lost, peer, DeadLetterReason.UNDECODABLE, error)

    def _admitted(self, peer: str, env: Envelope, done: asyncio.Future[None]) -> None:
        """A parked delivery left the queue: in the mailbox, or refused meanwhile."""
        left = self._parked.get(peer, 1) - 1
        if left:
            self._parked[peer] = left
        else:
            self._parked.pop(peer, None)
            resume = self._resume.pop(peer, None)
            if resume is not None and not resume.done():
                resume.set_result(None)
        if done.cancelled():
            self._not_delivered(env, KernelStopped("the kernel stopped while it waited for room"))
        elif (error := done.exception()) is not None:
            # refused while it waited (a failed activation, a fence)
            self._not_delivered(env, error if isinstance(error, Exception) else KernelStopped())

    @staticmethod
    def _flooded(env: Envelope, peer: str, parked: int) -> MailboxFull:
        target = env.target
        return MailboxFull(
            f"{peer} has {parked} messages waiting for room in full mailboxes here: "
            f"{KIND_NAMES[env.kind]} to {target} refused",
            target=target if isinstance(target, AgentId) else None,
            capacity=MAX_PARKED,
        )

    def _not_delivered(self, env: Envelope, error: Exception) -> None:
        """A message from another node refused here: its asker gets the error back;
        a tell or an event is a dead letter, counted, with the reason."""
        reply = env.reply
        if reply is not None:
            if not reply.done():
                reply.set_exception(error)
            return
        reason = _REASONS.get(type(error), DeadLetterReason.NOT_DELIVERED)
        if self._log_budget.allow(f"not delivered: {reason}") is not None:
            log.warning(
                "%s %s from %s not delivered: %s",
                KIND_NAMES[env.kind],
                type(env.payload).__qualname__,
                env.sender or "another node",
                describe(error),
            )
        self.runtime.undeliverable(env, env.target, reason, error)


def _turn_over(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)
