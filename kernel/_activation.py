"""One live agent: its mailbox, its worker, its lifecycle.

Invariants (the whole module is built on them, single-threaded on the event loop):

- An activation has a worker task exactly while it has work: messages to handle, a
  pending start, or a requested deactivation. An idle activation owns no task and no
  mailbox buffer, so a hundred thousand idle agents cost only their objects.
- ``put`` appends and, if no worker runs, spawns one in the kernel's task group. The
  worker drains the mailbox in order, one message at a time, then exits.
- A ``wait`` mailbox that is full parks the sender with its envelope in ``waiters``;
  every pop hands the oldest parked envelope straight into the mailbox (FIFO, no
  barging), so a slot is never free while someone waits for one.
- Deactivation runs ``on_stop`` in the worker after the mailbox drained; messages that
  arrive meanwhile move, in order, to the next activation of the same id.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ._activation_state import StateOwner
from ._agent import bind, load_state
from ._context import MessageContext
from ._envelope import ASK, TELL, Envelope, outgoing
from ._errors import (
    ActivationFailed,
    Conflict,
    DecodeError,
    Fenced,
    KernaInternalError,
    KernelStopped,
    MailboxFull,
    OwnedElsewhere,
    RemoteError,
    Unavailable,
)
from ._failures import describe, is_failure, remote_error
from ._message import DeadLetterReason
from ._timers import Timer

if TYPE_CHECKING:
    from ._agent import Agent
    from ._deferred import PendingReply
    from ._ids import AgentId
    from ._message import Message
    from ._registry import AgentType, HandlerFn
    from ._runtime import Runtime

__all__ = ["Activation", "current_activation"]

log = logging.getLogger("kerna.activation")

# Workers a sender may spawn without yielding before it gives them a turn (see
# ``Runtime.unstarted``): bounds pending tasks when one loop wakes many agents.
SPAWN_BURST = 256

# The activation whose worker runs the current task: sends made from inside a handler
# read it to inherit correlation, causation, deadline and ask chain. Set once per worker.
current_activation: ContextVar[Activation | None] = ContextVar("kerna_activation", default=None)


class Activation(StateOwner):
    """The kernel's record of one live agent (see the module docstring)."""

    __slots__ = (
        "agent",
        "atype",
        "closed",
        "closing",
        "current",
        "deactivating",
        "failure",
        "handoff",
        "id",
        "idle_bucket",
        "last_active",
        "mailbox",
        "on_closed",
        "pending",
        "runtime",
        "task",
        "timers",
        "waiters",
    )

    def __init__(self, runtime: Runtime, atype: AgentType, agent_id: AgentId) -> None:
        self.runtime = runtime
        self.atype = atype
        self.id = agent_id
        self.agent: Agent | None = None  # created and started by the worker
        self.mailbox: deque[Envelope] | None = None
        self.waiters: deque[tuple[Envelope, asyncio.Future[None]]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.current: Envelope | None = None
        self.failure: ActivationFailed | None = None
        self.timers: set[Timer] | None = None
        self.on_closed: asyncio.Future[None] | None = None
        self.pending: set[PendingReply] | None = None  # deferred replies not yet sent
        self.last_active = runtime.loop.time()
        self.idle_bucket = 0  # the idle collector's bucket this activation is in (0: none)
        self.deactivating = False
        self.handoff = False  # its node is leaving: close after the current message
        self.closing = False
        self.closed = False
        # The state side (``StateOwner``): the agent's committed state, the revision its
        # next write compares against, the claim's fencing token, the event sequence
        # number folded in, and whether a reload is due.
        self.state_value = None
        self.state_rev = 0
        self.token = 0
        self.seq = 0
        self.stale = False

    # -- intake ------------------------------------------------------------------------

    def put(self, env: Envelope, may_wait: bool = True) -> asyncio.Future[None] | None:
        """Enqueue ``env``; return a future to await when the sender must wait for room.

        Raises:
            MailboxFull: the mailbox is full and the policy is ``reject``, or the sender
                may not wait (timers, dead letters), or the agent is telling itself.
        """
        mailbox = self.mailbox
        if mailbox is None:
            mailbox = self.mailbox = deque()
        timing = self.atype.timing
        if timing is not None and not env.id % timing.every:  # sampled: kerna._timing
            env.queued_at = self.runtime.loop.time()
        if len(mailbox) < self.atype.capacity and not self.waiters:
            mailbox.append(env)
            if self.task is None:
                self.runtime.spawn(self)
            return None
        return self._overflow(mailbox, env, may_wait)

    def put_many(self, envelopes: list[Envelope], start: int = 0) -> int:
        """Enqueue ``envelopes[start:]`` as ``put`` would each, as far as the mailbox
        has room (nobody waiting for it): how many it took, in order. The rest are
        ``put`` one by one (a batch of messages from another node, ``kerna._remote``)."""
        mailbox = self.mailbox
        if mailbox is None:
            mailbox = self.mailbox = deque()
        if self.waiters:
            return 0
        room = self.atype.capacity - len(mailbox)
        if room <= 0:
            return 0
        taken = envelopes[start : start + room]
        timing = self.atype.timing
        if timing is not None:
            now = self.runtime.loop.time()
            every = timing.every
            for env in taken:
                if not env.id % every:  # sampled: kerna._timing
                    env.queued_at = now
        mailbox.extend(taken)
        if taken and self.task is None:
            self.runtime.spawn(self)
        return len(taken)

    def _overflow(
        self, mailbox: deque[Envelope], env: Envelope, may_wait: bool
    ) -> asyncio.Future[None] | None:
        atype = self.atype
        policy = atype.overflow
        if policy == "drop_oldest":
            oldest = mailbox.popleft()
            mailbox.append(env)
            atype.stats.dropped += 1
            self.runtime.not_handled(oldest, self.id, DeadLetterReason.DROPPED_OLDEST, self._full())
            return None
        if not may_wait:  # a timer tick or a dead letter: the caller counts it
            raise self._full()
        if policy == "reject":
            atype.stats.rejected += 1
            raise self._full()
        if current_activation.get() is self:
            atype.stats.rejected += 1
            raise MailboxFull(
                f"{self.id} told itself into its own full mailbox: waiting would deadlock",
                target=self.id,
                capacity=atype.capacity,
            )
        waiter: asyncio.Future[None] = self.runtime.loop.create_future()
        if self.waiters is None:
            self.waiters = deque()
        self.waiters.append((env, waiter))
        return waiter

    def _full(self) -> MailboxFull:
        atype = self.atype
        return MailboxFull(
            f"mailbox of {self.id} is full ({atype.capacity} messages, overflow={atype.overflow})",
            target=self.id,
            capacity=atype.capacity,
        )

    def adopt(self, old: Activation) -> None:
        """Take over the queue of ``old``, a closing activation of the same agent."""
        self.mailbox, self.waiters = old.mailbox, old.waiters
        old.mailbox = old.waiters = None

    def _admit_waiter(self, mailbox: deque[Envelope]) -> None:
        waiters = self.waiters
        while waiters:
            env, waiter = waiters.popleft()
            if waiter.done():  # the sender gave up (cancelled, or its ask timed out)
                self._count_abandoned(env)
                continue
            mailbox.append(env)
            waiter.set_result(None)
            return

    def _count_abandoned(self, env: Envelope) -> None:
        """A parked send whose sender gave up before it entered the mailbox."""
        reply = env.reply
        if reply is not None and reply.done():
            self.atype.stats.expired += 1  # an ask that timed out while parked
            self.runtime.expired(env, self.id)
        else:
            self.atype.stats.rejected += 1  # a sender cancelled while parked

    # -- the worker ----------------------------------------------------------------------

    async def run(self) -> None:
        """The worker: start if needed, drain the mailbox, deactivate if asked."""
        current_activation.set(self)
        runtime = self.runtime
        runtime.unstarted -= 1
        try:
            if self.agent is None and self.mailbox and not await self._start():
                return
            if self.mailbox:
                await self._drain()
            if self.deactivating:
                await self._close()
        except asyncio.CancelledError:
            # Only the kernel cancels a worker (at stop): a handler's own CancelledError
            # was reported as its failure in _drain. The message being handled, if any,
            # counts as failed; nothing queued here will be handled.
            if self.current is not None:
                self.atype.stats.failed += 1
            self.abort(KernelStopped(f"kernel stopped while {self.id} was busy"))
            raise
        except Exception as exc:
            # Never a handler's error (those go to askers in _drain): a bug in kerna. The
            # worker is the boundary: its messages fail, the agent leaves, the kernel
            # and every other agent live on.
            log.error("%s: internal error in its worker", self.id, exc_info=exc)
            if self.current is not None:
                self.atype.stats.failed += 1
            self.abort(
                KernaInternalError(f"{self.id}: {describe(exc)}"), DeadLetterReason.INTERNAL_ERROR
            )
            runtime.retire(self)
        finally:
            self.task = None
            self.current = None
            self.last_active = runtime.loop.time()
            runtime.worker_exited(self)

    async def _start(self) -> bool:
        atype = self.atype
        attempt = 0
        while True:
            agent = None
            try:
                if atype.claims:
                    claimed = await self.runtime.store().activate(
                        self.id, atype.state_spec, deadline=self._wait_until()
                    )
                    self.token = claimed.token
                    if atype.state_spec is not None:
                        self.loaded(claimed.stored)
                agent = atype.factory()
                if not isinstance(agent, atype.cls):
                    raise TypeError(f"factory of {atype.name} returned {agent!r}")
                bind(agent, self)
                if atype.state_spec is not None:
                    load_state(agent, self.state_value)
                await agent.on_start()
            except BaseException as exc:
                if not is_failure(exc, self.task, self.runtime.stopped):
                    raise
                await self.release()
                cluster = self.runtime.cluster
                if isinstance(exc, OwnedElsewhere) and cluster is not None:
                    if await cluster.wait_for_claim(self.id, exc):
                        continue  # its holder released it: claim it now
                    if cluster.moved(self, exc):  # its messages went to the holder
                        return False
                # An undecodable stored state or event will not decode on a retry either.
                if attempt >= atype.max_restarts or isinstance(exc, DecodeError):
                    self.failure = remote_error(exc, ActivationFailed, self.node_id())
                    log.warning("%s failed to start %d times: %r", self.id, attempt + 1, exc)
                    self._fail_all(DeadLetterReason.ACTIVATION_FAILED)
                    if isinstance(exc, Unavailable):
                        # The store was unreachable, not the agent broken: the failure
                        # does not stick; the next message activates it afresh.
                        self.runtime.retire(self)
                    return False
                delay = atype.restart_backoff * (2**attempt)
                attempt += 1
                atype.stats.restarts += 1
                log.info("%s on_start failed (%r); retry %d in %.3fs", self.id, exc, attempt, delay)
                await asyncio.sleep(delay)
            else:
                self.agent = agent
                return True

    def _wait_until(self) -> float | None:
        """How long starting may wait for the store (a new lease): until the last
        deadline of the queued messages; None (no bound of theirs) if one has none."""
        latest = None
        for env in self.mailbox or ():
            if env.deadline is None:
                return None
            if latest is None or env.deadline > latest:
                latest = env.deadline
        return latest

    async def _drain(self) -> None:
        mailbox = self.mailbox
        assert mailbox is not None
        agent = self.agent
        atype = self.atype
        handlers = atype.handlers
        stats = atype.stats
        runtime = self.runtime
        timing = atype.timing
        timed = False
        started = 0.0
        while True:
            if self.handoff:
                self.current = None
                return  # what is queued goes to the agent's next home (``_close``)
            if not mailbox:
                # Linger one loop iteration before giving the task up: a caller woken by
                # the reply just set usually sends its next message in that iteration,
                # which then needs no new task (the sequential-ask fast path).
                self.current = None
                await asyncio.sleep(0)
                if not mailbox:
                    break
            env = mailbox.popleft()
            if self.waiters:
                self._admit_waiter(mailbox)
            reply = env.reply
            if reply is not None and reply.done():
                stats.expired += 1  # nobody waits for this ask any more: do not run it
                runtime.expired(env, self.id)
                continue
            self.current = env
            message = env.payload
            fn = handlers.get(type(message)) or atype.handler_for(type(message))
            if fn is None:  # events are checked here; tell and ask at the sender
                runtime.unhandled(env, self.id, atype)
                continue
            if timing is not None:
                timed = env.queued_at >= 0.0  # a sampled message
                if timed:
                    started = runtime.loop.time()
                    timing.wait.observe(started - env.queued_at)
            try:
                if atype.plain and not self.stale:
                    result = await fn(agent, message)
                elif atype.around is not None and atype.direct and not self.stale:
                    # one synchronous handle link: its hooks here, no coroutine of its own
                    link = atype.around
                    plain = atype.bare.get(type(message)) or atype.plain_for(type(message))
                    ctx = MessageContext(env, runtime.loop)
                    try:
                        state = link.before(ctx)
                    except Exception as exc:
                        link.entered(exc)
                        raise
                    try:
                        result = await plain(agent, message)
                    except BaseException as exc:
                        link.exit_failed(ctx, state, exc)
                        raise
                    try:
                        link.after(ctx, state, result, None)
                    except Exception as exc:
                        link.entered(exc, 1)
                        raise
                else:
                    result = await self._call(fn, env)
            except BaseException as exc:
                # Whatever the handler raised is its failure (see kerna._failures),
                # except KeyboardInterrupt, SystemExit and the kernel's own cancellation.
                if not is_failure(exc, self.task, runtime.stopped):
                    raise
                stats.failed += 1
                reply = env.reply  # None once the handler deferred it
                if reply is not None:
                    if reply.done():
                        stats.late_replies += 1
                    else:
                        reply.set_exception(remote_error(exc, RemoteError, self.node_id()))
                elif env.kind != ASK:
                    runtime.handler_failed(env, self.id, exc)
                else:  # the handler deferred its reply, then raised
                    self._deferred_failed(env, exc)
            else:
                stats.handled += 1
                reply = env.reply  # None once the handler deferred it
                if reply is not None:
                    if reply.done():
                        stats.late_replies += 1
                    else:
                        reply.set_result(result)
            if timed and timing is not None:
                timing.handling.observe(runtime.loop.time() - started)
        self.mailbox = None

    def _deferred(self, env: Envelope) -> PendingReply | None:
        """The reply to ``env`` that its handler deferred, if not sent yet."""
        for pending in self.pending or ():
            if pending.context.message_id == env.id:
                return pending
        return None

    def _deferred_failed(self, env: Envelope, error: BaseException) -> None:
        """A handler that deferred its reply raised before sending it: the asker gets
        the error, as if the handler had not deferred."""
        pending = self._deferred(env)
        if pending is not None:
            pending.fail(error)

    def _undefer(self, env: Envelope) -> None:
        """Give a handler about to be re-run back the reply it deferred (if not sent)."""
        pending = self._deferred(env)
        if pending is not None:
            env.reply = pending.withdraw()

    async def _call(self, fn: HandlerFn, env: Envelope) -> Any:
        """A handler call with the type's options: deadline scope, Conflict re-runs, and
        (stateful types) a reload first when a write's outcome was left unknown; if the
        reload fails, the message fails with that error and the next one reloads."""
        atype = self.atype
        retries = atype.conflict_retries
        while True:
            if self.stale:
                await self.reload()
            try:
                if atype.cancel_at_deadline and env.deadline is not None:
                    async with asyncio.timeout_at(env.deadline):
                        return await fn(self.agent, env.payload)
                return await fn(self.agent, env.payload)
            except Conflict:
                if retries <= 0:
                    raise
                retries -= 1  # save() reloaded self.state: run the handler again on it
                if env.reply is None and env.kind == ASK:  # it deferred: the re-run will
                    self._undefer(env)

    async def _close(self) -> None:
        """Run ``on_stop`` and leave the directory; later messages go to a successor
        (on a leaving cluster node: to the agent's next home, before the claim is
        released, ``Departure.hand_off``). Deferred replies not yet sent fail with
        ``KernelStopped``; on a leaving node only those still unsent when the stop's
        grace ends (``_replies_sent``)."""
        self.closing = True
        cluster = self.runtime.cluster
        if cluster is not None and cluster.leaving and self.pending:
            left = f"{self.id}'s node left before it replied (the stop's grace ended)"
            try:
                await self._replies_sent(cluster.departure.deadline)
            finally:  # also when stop cancels this worker at the grace's end first
                self.fail_pending(KernelStopped(left))
        self.fail_pending(KernelStopped(f"{self.id} was deactivated before it replied"))
        await self.run_on_stop()
        if cluster is not None and cluster.leaving:
            self.runtime.retire(self)
            await cluster.departure.hand_off(self)
            return
        await self.release()
        self.runtime.retire(self)
        if self.mailbox or self.waiters:
            self.runtime.hand_over(self)

    async def _replies_sent(self, deadline: float) -> None:
        """Wait until ``deadline`` (the end of the stop's grace) for the deferred
        replies not yet sent to be sent (or their askers to give up): a hand-off, like
        the idle collector, does not cut short work that finishes within the grace.
        Messages that arrive meanwhile stay queued, for the agent's next home."""
        pending = self.pending or set()
        left = deadline - self.runtime.loop.time()
        if not pending or left <= 0:
            return
        log.info(
            "%s hands off once its %d deferred replies are sent (%.3gs of the grace left)",
            self.id,
            len(pending),
            left,
        )
        waits = [p.over() for p in pending]
        try:
            await asyncio.wait(waits, timeout=None if left == math.inf else left)
        finally:
            for wait in waits:
                wait.cancel()

    async def run_on_stop(self) -> None:
        """Call the agent's ``on_stop`` (if it started); what it raises is counted."""
        agent = self.agent
        if agent is None or not self.atype.has_on_stop:
            return
        try:
            await agent.on_stop()
        except BaseException as exc:
            if not is_failure(exc, asyncio.current_task(), self.runtime.stopped):
                raise
            self.atype.stats.failed += 1
            log.warning("%s on_stop raised %r", self.id, exc, exc_info=exc)

    def _fail_all(self, reason: str) -> None:
        """Fail every queued and parked message with this activation's failure."""
        for env in self._take_all(self.copy_failure):
            self.runtime.undeliverable(env, self.id, reason, self.copy_failure())

    def abort(self, error: Exception, reason: str = DeadLetterReason.KERNEL_STOPPED) -> None:
        """Nothing queued here will be handled (the kernel is stopping, by default).

        The asker of the message being handled gets ``error`` now (the handler, if it
        ever returns, finds its reply taken: a late reply); queued messages become dead
        letters for ``reason`` (their askers get ``error``); parked senders get
        ``error`` raised; deferred replies not yet sent fail with ``error``. Idempotent.
        """
        current = self.current
        if current is not None and current.reply is not None and not current.reply.done():
            current.reply.set_exception(error)
        self.fail_pending(error)
        for env in self._take_all(lambda: error):
            self.runtime.undeliverable(env, self.id, reason, error)

    def fail_pending(self, error: Exception) -> None:
        """Fail every deferred reply this activation has not sent (its askers get
        ``error``)."""
        pending, self.pending = self.pending, None
        for deferred in pending or ():
            deferred.abandon(error)

    def _take_all(self, refusal: Callable[[], BaseException]) -> list[Envelope]:
        """Empty the mailbox (returning its messages) and refuse every parked sender.

        A parked sender's message never entered the mailbox: the sender gets
        ``refusal()`` raised, and the send counts as rejected.
        """
        mailbox, self.mailbox = self.mailbox, None
        taken = list(mailbox or ())
        if mailbox:
            mailbox.clear()  # a worker still draining this deque must find it empty
        waiters, self.waiters = self.waiters, None
        for env, waiter in waiters or ():
            if waiter.done():
                self._count_abandoned(env)
            else:
                self.atype.stats.rejected += 1
                waiter.set_exception(refusal())
        return taken

    def take_to_move(self) -> list[Envelope]:
        """Take every queued message out, and those of parked senders (released as if
        admitted), in order, to send them to the agent's next home (its node leaves,
        or its claim turned out to be held by another node: ``Cluster.moved``)."""
        waiters, self.waiters = self.waiters, None
        taken = self._take_all(KernelStopped)  # no parked sender is left to refuse
        for env, waiter in waiters or ():
            if waiter.done():
                self._count_abandoned(env)
            else:
                taken.append(env)
                waiter.set_result(None)
        return taken

    def copy_failure(self) -> ActivationFailed:
        """A fresh copy of the failure (one exception object per raise)."""
        f = self.failure
        assert f is not None
        return ActivationFailed(f.type_name, f.message, f.traceback, f.node)

    def node_id(self) -> str:
        """The id of this activation's node (what its errors name)."""
        return self.runtime.kernel.node_id

    # -- lifecycle requests ------------------------------------------------------------

    def hand_off(self) -> None:
        """Its node is leaving the cluster: finish the message being handled, wait
        (within the grace) for the deferred replies not yet sent, then deactivate
        (``on_stop``); the messages queued then go to the agent's next
        home, and then the claim is released (``Departure.hand_off``). Idempotent."""
        self.handoff = True
        self.request_deactivation()

    def request_deactivation(self) -> None:
        """Deactivate once the mailbox is empty; idempotent."""
        if self.closed or self.deactivating:
            return
        self.deactivating = True
        if self.task is None:
            self.runtime.spawn(self)

    def deactivation(self) -> asyncio.Future[None]:
        """Request deactivation; a future resolved once the activation has closed."""
        if self.on_closed is None:
            self.on_closed = self.runtime.loop.create_future()
        closed = self.on_closed
        self.request_deactivation()
        return closed

    def fence(self, error: Fenced) -> None:
        """This activation lost its claim (the kernel's lease was lost): stop serving.

        Its claim is gone, so another kernel may hold the agent and write it:
        ``self.state`` can be stale. The asker of the message being handled and every
        queued message fail with ``error`` now (counted as dead letters; parked senders
        get it raised), and the activation leaves the directory at once, so the next
        message activates the agent afresh, with a new claim. ``on_stop`` still runs,
        once, after the running handler (if any) returns; a write it attempts is
        fenced.
        """
        if self.closed:
            return
        self.token = 0  # the claim is someone else's now: never release it
        self.abort(error, DeadLetterReason.LEASE_LOST)
        started = self.agent is not None or self.task is not None  # or starting now
        if started and self.atype.has_on_stop and not self.closing:
            self.deactivating = True
            if self.task is None:
                self.runtime.spawn(self)  # before leaving the directory: stop sees it
        self.runtime.retire(self)

    def schedule(self, delay: float, message: Message, *, repeat: bool) -> Timer:
        """See ``Agent.schedule``: a bad timer fails here, not when it fires."""
        from ._runtime import check_handled  # _runtime imports this module

        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise TypeError(f"timer delay must be a number of seconds, got {delay!r}")
        if not (delay >= 0 and math.isfinite(delay)) or (repeat and delay == 0):
            raise ValueError(f"timer delay must be > 0 (or >= 0 once), got {delay!r}")
        check_handled(self.atype, message)
        timer = Timer(self, delay, message, repeat)
        if self.timers is None:
            self.timers = set()
        self.timers.add(timer)
        return timer

    def deliver_tick(self, timer: Timer, message: Message) -> None:
        """A timer fired: enqueue ``message`` to self without ever blocking."""
        runtime = self.runtime
        if self.closing or self.closed or not runtime.accepts(None):
            timer.cancel()
            return
        # A root: a tick does not belong to whatever message is being handled now.
        env = outgoing(runtime.ids, TELL, self.id, message, self.id, None, headers=timer.headers)
        try:
            self.put(env, may_wait=False)
        except MailboxFull as exc:
            runtime.undeliverable(env, self.id, DeadLetterReason.MAILBOX_FULL, exc)

    def cancel_timers(self) -> None:
        for timer in list(self.timers or ()):
            timer.cancel()
        self.timers = None

    def time_left(self) -> float | None:
        current = self.current
        if current is None or current.deadline is None:
            return None
        return max(0.0, current.deadline - self.runtime.loop.time())

    def queued(self) -> int:
        return len(self.mailbox or ()) + len(self.waiters or ())

    def handling(self) -> bool:
        """Whether a handler of this activation runs now (its worker is awaiting it:
        ``current`` is cleared whenever the worker waits for anything else)."""
        return self.task is not None and self.current is not None

    def __repr__(self) -> str:
        state = "failed" if self.failure else "running" if self.task else "idle"
        return f"<Activation {self.id} {state} queued={self.queued()}>"
