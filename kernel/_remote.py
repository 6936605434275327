"""Remote delivery: envelopes to and from agents on other nodes, over one transport.

A kernel started with ``Kernel(transport="tcp://127.0.0.1:7101")`` has one ``Remote``:
its transport (``kerna.transports``) and its wire codec (``kerna._wire``). A ref made
with ``kernel.ref(Type, key, node="tcp://10.0.0.2:7101")`` routes through a
``RemoteRoute`` for that node: ``Runtime.deliver`` hands it the envelope, which is
encoded once and sent. The receiving kernel decodes the frame (the payload by its wire
tag) and hands the envelope to its own ``Runtime.deliver``, exactly as a local send; the
handler's reply (or failure) goes back to the asking node, which completes the asker's
future. An ask's deadline travels as remaining time; both sides give up at it.

What cannot be delivered on the receiving side (an unknown agent type, no handler, a
full ``reject`` mailbox, a frame that does not decode) comes back to a remote asker as
a ``RemoteError`` carrying the error's type name, and is logged and counted otherwise.
A peer that is lost fails the asks waiting on it with ``NodeLost`` (a
``PeerUnreachable``): at once when its connection breaks (a killed process), or once it
has been silent for the transport's heartbeat timeout (tcp: ``heartbeat *
heartbeat_misses``), never only at the ask's own timeout.

The receiving side (decoding frames, delivering them here, flow control) is
``kerna._remote_inbound``; this module sends, keeps the asks waiting on other nodes, and
follows peers lost and met.

Delivery is at most once: nothing is sent twice, and a frame written to a connection
that breaks may be lost. Each delivery is numbered per peer so that the receiver
counts what was lost (``Kernel.delivery_stats``, ``kerna._delivery_order``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kerna.transports import Transport, open_transport

from ._delivery_order import DeliveryStats
from ._envelope import ASK, KIND_NAMES, Envelope
from ._errors import (
    KernelStopped,
    NodeLost,
)
from ._failure_log import LogBudget
from ._failures import describe
from ._message import DeadLetterReason
from ._remote_inbound import Inbound
from ._remote_routes import RemoteRoute
from ._schema_exchange import SchemaExchange, reads_batches
from ._send_backlog import Backlog
from ._send_batch import MAX_BYTES, MAX_ITEMS, SendBatch
from ._wire import Reply, WireCodec, WireError, WireErrorReason

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["Remote", "RemoteRoute"]

log = logging.getLogger("kerna.remote")


_MAX_SEQ = (1 << 63) - 1  # the largest delivery number (an upper bound of its size)
_SWEEP_AT = 1024  # asks waiting on other nodes before the first sweep of given-up ones


class Remote:
    """One kernel's transport, codec and the asks it waits on from other nodes."""

    def __init__(self, runtime: Runtime, transport: Transport, codec: WireCodec) -> None:
        self.runtime = runtime
        self.transport = transport
        self.codec = codec
        self._routes: dict[str, RemoteRoute] = {}
        # Asks sent to other nodes, by message id: the asker's future and the node.
        self._waiting: dict[int, tuple[asyncio.Future[Any], str]] = {}
        self._sweep_at = _SWEEP_AT
        self._tasks: set[asyncio.Task[None]] = set()
        self._replying: set[asyncio.Task[None]] = set()  # replies waiting for a connection
        self._log_budget = LogBudget(time.monotonic)  # unsent batches logged, per error
        self._closing = False  # aclose began: what fails to go out, the stop failed
        self.schemas = SchemaExchange(codec.types)
        # Told of every lost peer's address, after its waiting asks failed (the cluster
        # parks what it sends to that node: kerna._cluster_parking).
        self.peer_lost: Callable[[str], None] | None = None
        # Delivery numbering: this Remote's epoch (never 0: 0 means not numbered), the
        # last number queued per peer, and what the numbers from peers showed.
        self.epoch = secrets.randbits(63) or 1
        self._seq: dict[str, int] = {}
        self._backlogs: dict[str, Backlog] = {}  # per peer: deliveries waiting to be queued
        # Per peer, the deliveries gathered in this loop pass (kerna._send_batch), sent
        # by the callback _pass_over at the pass's end; which peers read batches (by
        # the schema document they sent: re-read when it changes).
        self._batches: dict[str, SendBatch] = {}
        self._pass_over_scheduled = False
        self._reads_batches: dict[str, tuple[object, bool]] = {}
        self._hot: set[str] = set()  # peers whose sends are gathered (_hot_peer)
        # Per cold peer, how many frames this node had received when it last sent there.
        self._last_sent: dict[str, int] = {}
        self._peer_info = getattr(transport, "peer_info", None)
        self._reply_to = ""  # an ask's reply address: this transport's, from start
        self._encode_item = codec.encode_item
        self.inbound = Inbound(self)  # what comes in from peers (kerna._remote_inbound)

    @classmethod
    def open(cls, runtime: Runtime, url: str, options: dict[str, Any]) -> Remote:
        """A remote link on the transport for ``url`` (not started).

        Raises:
            ConfigError: bad URL, unknown scheme, missing extra, bad option.
        """
        transport = open_transport(url, **options)
        return cls(runtime, transport, WireCodec(max_frame_size=transport.max_frame_size))

    @property
    def address(self) -> str:
        return self.transport.address

    async def start(self) -> None:
        self.codec.clock = self.runtime.loop.time
        transport = self.transport
        self.types_changed()
        await transport.start(self.inbound.on_frame, self._on_peer_lost)
        self._reply_to = transport.address  # (known once it listens: a port 0 is chosen)
        # A transport may lower its limit on start (nats: the server's max_payload).
        self.codec.max_frame_size = self.transport.max_frame_size

    async def aclose(self, deadline: float | None = None) -> None:
        """Fail the asks still waiting on other nodes, let the replies this node owes
        reach the transport, and close it.

        A reply can still be on its way when the kernel stops: the ``KernelStopped``
        error replies of the asks its agents were handling, say, sent on a connection
        to the asker that this node had never needed before and is still opening. The
        transport closes once those are queued on their connections (or could not be:
        the peer is unreachable), or at ``deadline`` (the loop's time; None: at once);
        closed first, the asker would see the connection break (``NodeLost``) instead
        of the error. A transport that waits for its peers to read the last frames
        (tcp's ``close_wait``) waits until ``deadline`` at most.
        """
        self._closing = True
        for future, node in self._waiting.values():
            if not future.done():  # a forwarded ask's: its asker's reply goes out too
                future.set_exception(KernelStopped(f"kernel stopped before {node} replied"))
        self._waiting.clear()
        self._pass_over()  # what this pass gathered is queued (or fails) first
        for backlog in self._backlogs.values():
            backlog.close()
        await self._replies_sent(deadline)
        if deadline is not None and hasattr(self.transport, "close_wait"):
            # tcp waits for peers to read its last frames: within the stop's bound too
            left = deadline - self.runtime.loop.time()
            self.transport.close_wait = max(0.0, min(self.transport.close_wait, left))
        await self.transport.aclose()
        self.inbound.release()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)

    async def _replies_sent(self, deadline: float | None) -> None:
        """Wait until ``deadline`` for the replies whose sends wait for a connection
        (more may start meanwhile: an ask refused while stopping is answered too)."""
        loop = self.runtime.loop
        while self._replying and deadline is not None and loop.time() < deadline:
            await asyncio.wait(set(self._replying), timeout=deadline - loop.time())

    def route(self, node: str) -> RemoteRoute:
        route = self._routes.get(node)
        if route is None:
            route = self._routes[node] = RemoteRoute(self, node)
        return route

    # -- sending -------------------------------------------------------------------------

    def send(self, node: str, env: Envelope) -> Awaitable[None] | None:
        """Encode ``env`` for ``node`` and queue it; an ask's reply future is remembered
        until the reply comes back (or the asker gives up).

        Returns None when the transport queued the frame at once; else a future that
        completes once it has (the connection is being made, or its queue is full: the
        sender awaits it), failing with the transport's error if it could not be. Every
        frame carries the next number for ``node`` (``kerna._delivery_order``): those
        that wait go through the peer's ``Backlog``, in the order they were sent.

        Raises:
            WireError: the message cannot be encoded.
        """
        reply_to = self._reply_to if env.kind == ASK else None
        reply = env.reply
        if reply is not None:
            waiting = self._waiting
            waiting[env.id] = (reply, node)
            if len(waiting) >= self._sweep_at:
                self._sweep()
        if self._batches:
            batch = self._batches.get(node)
            if batch is not None:
                first = batch.first
                message = env.payload
                if (  # the batch's routing (SendBatch.takes, inline: per message)
                    type(message) is batch.type
                    and env.kind == first.kind
                    and (env.target is first.target or env.target == first.target)
                    and (env.sender is first.sender or env.sender == first.sender)
                    and (env.chain is first.chain or env.chain == first.chain)
                    and (env.headers is first.headers or env.headers == first.headers)
                ):  # (the same objects, usually: one ref's id, no sender, no chain)
                    # Encoded now, so that a failure is its sender's, as for a frame
                    # (SendBatch.add, inline: per message).
                    buffer = batch.buffer
                    start = len(buffer)
                    deadline = env.deadline
                    try:
                        self._encode_item(
                            (env.id, message, env.correlation_id, env.causation_id)
                            if deadline is None
                            else (
                                env.id, message, env.correlation_id, env.causation_id,
                                deadline - self.runtime.loop.time(),
                            ),
                            buffer,
                            start,
                        )  # fmt: skip
                    except Exception:
                        del buffer[start:]
                        self.codec.encode_payload(message)  # raises the WireError that says why
                        raise
                    if len(buffer) - start > self.codec.max_frame_size:
                        try:  # the codec refuses a message over its limit
                            self.codec.encode_payload(message)
                        except WireError:
                            del buffer[start:]
                            raise
                    batch.envelopes.append(env)
                    if len(buffer) >= MAX_BYTES or len(batch.envelopes) >= MAX_ITEMS:
                        self._flush_batch(node)
                    return None
                self._flush_batch(node)  # what it gathered goes first
        backlog = self._backlogs.get(node)
        if backlog is None:
            seq = self._seq.get(node, 0) + 1
            frame = self.codec.encode(env, reply_to, epoch=self.epoch, seq=seq)
            batching = self._peer_info is not None and self._hot_peer(node)
            if batching and not self._pass_over_scheduled:
                # Scheduled before the frame is queued, so before the transport's own
                # end-of-pass write: the batch is queued in time to go out with it.
                self._pass_over_scheduled = True
                self.runtime.loop.call_soon(self._pass_over)
            if self.transport.send_now(node, frame):
                self._seq[node] = seq
                if batching:
                    self._batches[node] = SendBatch(env)  # the pass's next ones may join
                return None  # queued: no task needed (the common case, once connected)
            backlog = self._backlogs[node] = Backlog(node)
            self._spawn(self._drain(node, backlog))  # owned by this link, cancelled at close
        else:
            self.codec.encode(env, reply_to)  # a message that cannot be encoded fails now
        return backlog.add(env, self.runtime.loop)

    def _batching(self, node: str) -> bool:
        """Whether ``node`` said it reads batch frames (in the schema document its
        transport passed on; read again only when that changes)."""
        assert self._peer_info is not None
        info = self._peer_info(node)
        if info is None:
            return False
        known = self._reads_batches.get(node)
        if known is not None and known[0] is info.schema:
            return known[1]
        reads = reads_batches(node, info.schema)
        self._reads_batches[node] = (info.schema, reads)
        return reads

    def _hot_peer(self, node: str) -> bool:
        """Whether to gather what else this pass sends ``node`` into a batch: it reads
        batches, and it is hot (kerna._send_batch: its last pass's batch was not empty,
        or this send follows another to it with no frame received in between). A cold
        peer costs no callback per send (a sequential ask sends one message per pass,
        and its reply comes in between)."""
        if node in self._hot:  # (and it still says so: it may have restarted older)
            return self._batching(node)
        received = self.inbound.frames_in
        last = self._last_sent.get(node)
        self._last_sent[node] = received
        if last != received or not self._batching(node):
            return False
        self._hot.add(node)
        return True

    def _pass_over(self) -> None:
        """The loop pass is over: send every batch gathered in it (a peer whose batch
        stayed empty is cold again)."""
        self._pass_over_scheduled = False
        for node, batch in list(self._batches.items()):
            if not batch.envelopes:
                self._hot.discard(node)
            self._flush_batch(node)

    def _flush_batch(self, node: str) -> None:
        """Send ``node``'s batch (none is open for it afterwards): queued at once, or
        in the peer's ``Backlog`` (kerna._send_batch says what its senders see)."""
        batch = self._batches.pop(node)
        if batch.envelopes:
            self._send_batch(node, batch)

    def _send_batch(self, node: str, batch: SendBatch) -> None:
        """``_flush_batch``'s sending. A batch frame over the frame limit (a transport
        with a small ``max_frame_size``: each message fit alone) is sent in halves, in
        order; a message whose frame is over it even alone fails as ``_batch_failed``."""
        backlog = self._backlogs.get(node)
        seq = self._seq.get(node, 0) + 1
        try:  # (a backlog numbers it at its turn: the largest number bounds its size)
            frame = self._batch_frame(batch, seq if backlog is None else _MAX_SEQ)
        except WireError as exc:
            if exc.reason == WireErrorReason.TOO_LARGE and len(batch.envelopes) > 1:
                for part in batch.halves(self._encode_item, self.runtime.loop.time):
                    self._send_batch(node, part)
                return
            self._batch_failed(batch, exc)
            return
        if backlog is None:
            if self.transport.send_now(node, frame):
                self._seq[node] = seq + len(batch.envelopes) - 1
                return
            backlog = self._backlogs[node] = Backlog(node)
            self._spawn(self._drain(node, backlog))
        future = backlog.add(batch, self.runtime.loop)
        future.add_done_callback(lambda done: self._batch_sent(batch, done))

    def _batch_frame(self, batch: SendBatch, seq: int) -> bytes:
        first = batch.first
        reply_to = self._reply_to if first.kind == ASK else None
        return self.codec.encode_batch(first, batch.items(), reply_to, epoch=self.epoch, seq=seq)

    def _batch_sent(self, batch: SendBatch, done: asyncio.Future[None]) -> None:
        """A batch that waited in a backlog was queued, or could not be."""
        if done.cancelled():
            self._batch_failed(batch, KernelStopped("kernel stopped before sending"))
        elif (error := done.exception()) is not None:
            self._batch_failed(batch, error if isinstance(error, Exception) else KernelStopped())

    def _batch_failed(self, batch: SendBatch, error: Exception) -> None:
        """Nothing of ``batch`` was sent: its asks fail with ``error``, its tells and
        events are dead letters (their senders have returned): ``KERNEL_STOPPED`` if
        the kernel's stop failed it (its backlog closed, its transport closed), else
        ``NOT_DELIVERED``."""
        reason = (
            DeadLetterReason.KERNEL_STOPPED
            if self._closing or isinstance(error, KernelStopped)
            else DeadLetterReason.NOT_DELIVERED
        )
        for env in batch.envelopes:
            reply = env.reply
            if reply is not None:
                self._waiting.pop(env.id, None)
                if not reply.done():
                    reply.set_exception(error)
                continue
            if self._log_budget.allow(f"not sent: {type(error).__name__}") is not None:
                log.warning(
                    "%s %s to %s not sent: %s",
                    KIND_NAMES[env.kind], type(env.payload).__qualname__, env.target,
                    describe(error),
                )  # fmt: skip
            self.runtime.undeliverable(env, env.target, reason, error)

    async def _drain(self, node: str, backlog: Backlog) -> None:
        try:
            await backlog.run(lambda env: self._send_numbered(node, env))
        finally:
            del self._backlogs[node]

    async def _send_numbered(self, node: str, env: Envelope | SendBatch) -> None:
        """Send ``env`` with the next number for ``node`` (from its backlog, in turn)."""
        seq = self._seq.get(node, 0) + 1
        if isinstance(env, SendBatch):
            await self.transport.send(node, self._batch_frame(env, seq))
            self._seq[node] = seq + len(env.envelopes) - 1
            return
        reply_to = self._reply_to if env.kind == ASK else None  # as in send()
        frame = self.codec.encode(env, reply_to, epoch=self.epoch, seq=seq)
        try:
            await self.transport.send(node, frame)
        except Exception:
            if env.reply is not None:  # no reply will come: its asker gets this error
                self._waiting.pop(env.id, None)
            raise
        self._seq[node] = seq

    def waiting_asks(self) -> int:
        """Asks sent to other nodes that this node still keeps (some may have given up
        since the last sweep)."""
        return len(self._waiting)

    def unanswered(self) -> list[asyncio.Future[Any]]:
        """The reply futures of the asks sent to other nodes whose askers still wait
        (forwarded ones too)."""
        return [future for future, _ in self._waiting.values() if not future.done()]

    def _sweep(self) -> None:
        """Forget the asks whose askers gave up (timed out, cancelled) with no reply.

        A reply pops its ask; this sweep (amortized: when the table has doubled since the
        last one) spares every ask a done callback of its own."""
        waiting = self._waiting
        for message_id in [mid for mid, (future, _) in waiting.items() if future.done()]:
            del waiting[message_id]
        self._sweep_at = max(_SWEEP_AT, 2 * len(waiting))

    def own(self, sending: Awaitable[None]) -> asyncio.Future[None]:
        """A future for what ``send`` returned, kept running by this link even if
        nobody awaits it (a forwarded message); cancelled at close."""
        if isinstance(sending, asyncio.Future):
            return sending
        return self._spawn(sending)

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self.runtime.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            task.exception()  # retrieved: the sender awaiting it gets it

    # -- receiving -----------------------------------------------------------------------

    def schema_mismatches(self) -> dict[str, list[str]]:
        """Per peer, the wire tags both nodes know whose schemas are incompatible (from
        what peers sent when they met; a transport that exchanges nothing reports
        none)."""
        return self.schemas.mismatches()

    def met(self, peer: str) -> None:
        """The first frame from ``peer`` came: compare what it sent about its schemas
        (its handshake or probe) with ours (``kerna._schema_exchange``)."""
        peer_info = self._peer_info
        info = None if peer_info is None else peer_info(peer)
        if info is not None and info.schema:
            self.schemas.compare(peer, info.schema)

    def types_changed(self) -> None:
        """The types this node decodes changed (an agent type registered): what it
        tells the peers it meets from now on changes too."""
        if hasattr(self.transport, "schema"):  # a transport that tells peers (tcp, nats)
            self.transport.schema = self.schemas.document()

    def replied(self, reply: Reply) -> None:
        """A reply came (``kerna._remote_inbound``): it completes the ask it answers,
        unless its asker gave up (a late reply, dropped)."""
        waiting = self._waiting.pop(reply.id, None)
        if waiting is None:
            return  # the asker gave up (timed out): a late reply
        future, _ = waiting
        if future.done():
            return
        if reply.error is not None:
            future.set_exception(reply.error)
        else:
            future.set_result(reply.value)

    def fail_ask(self, message_id: int, error: Exception) -> None:
        """The reply to the ask ``message_id`` came and could not be decoded: the asker
        gets ``error``."""
        waiting = self._waiting.pop(message_id, None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_exception(error)

    def delivery_stats(self) -> DeliveryStats:
        """What the numbers on deliveries from other nodes showed: how many were lost
        (gaps) and how many came out of order (never, unless there is a bug)."""
        return self.inbound.order.stats()

    def send_reply(self, node: str, message_id: int, request: type[Any], value: Any) -> None:
        """Send the reply to the ask ``message_id`` from ``node`` (an error reply if the
        value cannot be encoded)."""
        try:
            frame = self.codec.encode_reply(message_id, request, value)
        except WireError as exc:
            frame = self.codec.encode_error(message_id, exc)
        self._answer(node, frame)

    def send_error(self, node: str, message_id: int, error: BaseException) -> None:
        """Send the error reply to the ask ``message_id`` from ``node``."""
        self._answer(node, self.codec.encode_error(message_id, error))

    def _answer(self, node: str, frame: bytes) -> None:
        if self._batches and node in self._batches:
            self._flush_batch(node)  # the deliveries gathered before this reply go first
        try:
            if self.transport.send_now(node, frame):
                return
        except Exception as exc:  # a reply over the frame limit, say
            log.info("a reply could not be sent: %s", describe(exc))
            return
        task = self._spawn(self.transport.send(node, frame))
        task.add_done_callback(_log_failed_reply)
        self._replying.add(task)  # aclose lets it finish first
        task.add_done_callback(self._replying.discard)

    def _on_peer_lost(self, peer: str, error: BaseException | None) -> None:
        """Fail the asks waiting on ``peer``: their frames or replies may be lost."""
        self._hot.discard(peer)  # (a peer met again says again whether it reads batches)
        self._last_sent.pop(peer, None)
        self._reads_batches.pop(peer, None)
        lost = [mid for mid, (_, node) in self._waiting.items() if node == peer]
        for message_id in lost:
            future, _ = self._waiting.pop(message_id)
            if not future.done():
                future.set_exception(
                    NodeLost(f"lost the connection to {peer} before it replied: {error}", peer=peer)
                )
        if self.peer_lost is not None:
            self.peer_lost(peer)


def _log_failed_reply(task: asyncio.Task[None]) -> None:
    error = None if task.cancelled() else task.exception()
    if error is not None:
        log.info("a reply could not be sent: %s", describe(error))
