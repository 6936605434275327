"""The runtime: what a kernel is inside, behind the ``Kernel`` facade.

One ``Runtime`` per kernel owns everything that lives while the kernel runs: the
directory of activations, the registered agent types, the message ids, the task group
every worker runs in, the lifecycle phase and the kernel-wide counters. The other
modules talk to it only through the named methods below.

The delivery path. Every message takes ``deliver(envelope)``: a ref's ``tell`` and
``ask``, a publish's fan-out (through ``Topics``), a timer tick, a dead letter, and (with
the transports) an envelope a peer sent. ``deliver`` is where routing decides where the
target lives; today every target is local, so it finds (or creates) the activation and
puts the envelope in its mailbox. The activation's worker, spawned here, handles it and
answers through the envelope's reply future.

Ownership: ``start`` creates one root task holding an ``asyncio.TaskGroup``; every
worker is a child of that group, so nothing the kernel starts outlives it. The
shutdown sequence lives in ``kerna._shutdown``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ._activation import Activation
from ._dead_letters import DeadLetterStore
from ._envelope import Envelope
from ._errors import (
    Fenced,
    KernelStopped,
    UnhandledMessage,
    UnknownAgent,
)
from ._failure_log import FailureLog
from ._failures import describe
from ._idle import IdleCollector
from ._ids import AgentId, message_ids
from ._message import DeadLetterReason, Message
from ._topics import Topics

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._kernel import Kernel
    from ._persistence import Persistence
    from ._registry import AgentType
    from ._remote import Remote

__all__ = ["DRAINING", "RUNNING", "Phase", "Runtime", "names"]

log = logging.getLogger("kerna.kernel")

T = TypeVar("T")

_NOT_STARTED: Any = None  # the loop, before start


class Phase(enum.Enum):
    """Where a kernel is in its life.

    ``NEW``: not started; ``RUNNING``: takes messages from anyone; ``DRAINING``: stop
    was called: outside senders are refused, agents still send each other messages
    during the grace period; ``STOPPING``: everything is refused, workers are being
    cancelled and ``on_stop`` hooks run; ``STOPPED``: nothing of the kernel runs.
    """

    NEW = enum.auto()
    RUNNING = enum.auto()
    DRAINING = enum.auto()
    STOPPING = enum.auto()
    STOPPED = enum.auto()


RUNNING = Phase.RUNNING
DRAINING = Phase.DRAINING


class Runtime:
    """The inside of one kernel (see the module docstring).

    Attributes:
        kernel: the public facade (agents reach it as ``self.kernel``).
        loop: the event loop, once started.
        phase: the lifecycle phase.
        types: registered agent types by name.
        directory: the live activation of each agent id.
        ids: the message id sequence.
        topics: subscriptions and event fan-out.
        idle: the idle collector, while running.
        busy: workers and kernel tasks (``Kernel.create_task``) running now.
        tasks: the kernel tasks running now.
        unstarted: workers spawned that have not run yet (see ``SPAWN_BURST``).
        dead_letters: dead letters so far, including those for unknown agent types.
        dead_letter_store: the last dead letters, kept for inspection and replay.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.loop: asyncio.AbstractEventLoop = _NOT_STARTED
        self.phase = Phase.NEW
        self.types: dict[str, AgentType] = {}
        self.directory: dict[AgentId, Activation] = {}
        # Activations that left the directory while their worker still runs (a fenced
        # one finishing its handler and on_stop): stop waits for them too.
        self.retiring: set[Activation] = set()
        self.ids = message_ids()
        self.topics = Topics(self)
        self.persistence: Persistence | None = None
        self.remote: Remote | None = None  # the link to other nodes (with a transport)
        self.cluster: Cluster | None = None  # placement and routing (with a cluster)
        self.idle: IdleCollector | None = None
        self.failure_log: FailureLog | None = None
        self.task_group: asyncio.TaskGroup | None = None
        self.busy = 0
        # Workers spawned but not yet run. A sender that activates agents in a tight loop
        # yields once this passes SPAWN_BURST, so pending tasks stay bounded (and so does
        # memory) however many agents it wakes without awaiting.
        self.unstarted = 0
        self.dead_letters = 0
        self.dead_letter_store = DeadLetterStore(kernel.dead_letters_kept)
        # Tasks started through ``Kernel.create_task`` (plug-ins' shared computations,
        # batches): counted in ``busy`` and cancelled with the workers at stop.
        self.tasks: set[asyncio.Task[Any]] = set()
        # The ``send`` hooks of the kernel's middleware chain, around sends from outside
        # any agent (an agent's sends take its type's ``AgentType.outbound``).
        self.outbound: tuple[Any, ...] = ()
        # Futures resolved when no worker runs (stop's grace period, wait_idle).
        self._quiet: list[asyncio.Future[None]] = []

    # -- phase ---------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """True when nothing is accepted, not even from agents (not started, or past
        the grace period of ``stop``)."""
        phase = self.phase
        return phase is not RUNNING and phase is not DRAINING

    def accepts(self, sender: Activation | None) -> bool:
        """Whether a send from ``sender`` (None: from outside any agent) is taken now.

        While draining, sends from agents are taken, and so are those a task of
        ``Kernel.create_task`` makes itself: work the grace waits for may finish.
        """
        phase = self.phase
        return phase is RUNNING or (
            phase is DRAINING and (sender is not None or asyncio.current_task() in self.tasks)
        )

    def accepts_inbound(self) -> bool:
        """Whether a message from another node is taken now: while running, and while
        a cluster node leaves, until its transport closes (a live activation here
        handles it, or it is forwarded to the agent's next home)."""
        phase = self.phase
        if phase is RUNNING:
            return True
        cluster = self.cluster
        return cluster is not None and cluster.leaving and phase is not Phase.STOPPED

    def refusal(self, what: str) -> KernelStopped:
        """The error for work refused because the kernel is not running."""
        if self.phase is Phase.NEW:
            return KernelStopped(
                f"kernel is not running ({what}): use 'async with Kernel()' or start()"
            )
        state = "stopped" if self.phase is Phase.STOPPED else "stopping"
        return KernelStopped(f"kernel is {state} ({what})")

    def refuse(self, target: AgentId, what: str) -> KernelStopped:
        """A send to ``target`` refused because the kernel is not running (counted)."""
        atype = self.types.get(target.type)
        if atype is not None:
            atype.stats.rejected += 1
        return self.refusal(what)

    def store(self) -> Persistence:
        """The state backend link, while the kernel runs.

        Raises:
            KernelStopped: the kernel has not started.
        """
        persistence = self.persistence
        if persistence is None:
            raise self.refusal("state is not available")
        return persistence

    # -- delivery ------------------------------------------------------------------------

    def deliver(self, env: Envelope, route: Any = None) -> Awaitable[None] | None:
        """Route ``env`` to its target: the one entry every message takes.

        ``route`` is the sender's cached routing decision (an ``AgentRef``'s ``route``
        slot), refreshed here when stale: a local activation, or in a cluster a
        ``ClusterRoute`` to the node its placement chose (``Cluster.route``). Returns
        None once the message is in the mailbox, or an awaitable the sender awaits:
        room in a ``wait`` mailbox, or the rest of an event's fan-out.

        Raises:
            UnknownAgent, UnhandledMessage, TypeError: the target cannot take it.
            ActivationFailed: the target failed to start.
            MailboxFull: a ``reject`` mailbox is full.
        """
        target = env.target
        if type(target) is not AgentId:
            cluster = self.cluster
            if cluster is None:
                return self.topics.fan_out(env)
            return cluster.topics.fan_out(env)  # to each subscription's key owner
        act: Any = route.route if route is not None else None  # or a ClusterRoute
        if act is None or act.closed:
            cluster = self.cluster
            # In a cluster, the placement decides, except for a message another node
            # sent here (its sender's placement chose this node; a claim held elsewhere
            # forwards it: ``Cluster.moved``), unless this node is leaving.
            inbound = getattr(route, "inbound", False)
            if cluster is not None and type(env.payload) is cluster.marker:
                return cluster.pass_marker(env, inbound)  # kerna._cluster_flush
            if cluster is None or (inbound and not cluster.leaving):
                act = self.resolve(target, env.payload)
            else:
                if inbound:
                    cluster.departure.seen()
                act = cluster.route(target, env.payload)
            if route is not None:
                route.route = act
        elif type(env.payload) not in act.atype.handlers:
            cluster = self.cluster
            if cluster is not None and type(env.payload) is cluster.marker:
                return cluster.pass_marker(env, getattr(route, "inbound", False))
            check_handled(act.atype, env.payload)
        if act.failure is not None:
            act.atype.stats.rejected += 1
            raise act.copy_failure()
        pending: Awaitable[None] | None = act.put(env)
        return pending

    def resolve(self, target: AgentId, message: Any) -> Activation:
        """The local activation of ``target`` for ``message`` (created if needed),
        checking everything a sender can fix.

        Raises:
            UnknownAgent: the type is not registered.
            UnhandledMessage, TypeError: see ``check_handled``.
        """
        act = self.directory.get(target)
        if act is None:
            atype = self.types.get(target.type)
            if atype is None:
                raise UnknownAgent(
                    f"no agent type {target.type!r} is registered", agent_type=target.type
                )
            check_handled(atype, message)
            act = self.directory[target] = Activation(self, atype, target)
            atype.stats.active += 1
            atype.stats.activations += 1
            return act
        if type(message) not in act.atype.handlers:
            check_handled(act.atype, message)
        return act

    def activation(self, agent_id: AgentId, atype: AgentType) -> Activation:
        """The live activation of ``agent_id``, created (idle, no task) if there is none."""
        act = self.directory.get(agent_id)
        if act is None:
            act = self.directory[agent_id] = Activation(self, atype, agent_id)
            atype.stats.active += 1
            atype.stats.activations += 1
        return act

    # -- workers -------------------------------------------------------------------------

    def spawn(self, act: Activation) -> None:
        """Start ``act``'s worker in the kernel's task group.

        Raises:
            KernelStopped: the task group is gone (the kernel stopped).
        """
        tg = self.task_group
        if tg is None:
            raise KernelStopped("kernel is not running: use 'async with Kernel()' or start()")
        self.busy += 1
        self.unstarted += 1
        act.task = tg.create_task(act.run())

    def spawn_task(self, coro: Coroutine[Any, Any, T], name: str | None) -> asyncio.Task[T]:
        """See ``Kernel.create_task``.

        Raises:
            KernelStopped: the kernel is not running (nor draining); ``coro`` is closed.
        """
        if self.task_group is None or self.stopped:
            coro.close()  # never awaited: no "coroutine was never awaited" warning
            raise self.refusal("no task started")
        # Not a child of the task group: a task group takes a child's exception for its
        # own failure and cancels everything. Stop cancels and awaits these instead.
        task = self.loop.create_task(coro, name=name)
        self.busy += 1
        self.tasks.add(task)
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self._less_busy()

    def worker_exited(self, act: Activation) -> None:
        """``act``'s worker ended: count it, wake quiet waiters, bucket it for idling."""
        if act.closed:
            self.retiring.discard(act)
        self._less_busy()
        idle = self.idle
        if idle is not None:
            idle.idle(act)

    def _less_busy(self) -> None:
        self.busy -= 1
        if self.busy == 0 and self._quiet:
            for waiter in self._quiet:
                if not waiter.done():
                    waiter.set_result(None)
            self._quiet.clear()

    def quiet(self) -> asyncio.Future[None]:
        """A future resolved once no worker runs (at once if none does); hand it back
        to ``forget_quiet`` if you stop waiting for it first."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self.busy == 0:
            waiter.set_result(None)
        else:
            self._quiet.append(waiter)
        return waiter

    def quiet_waiters(self) -> int:
        """How many ``quiet`` futures are tracked now."""
        return len(self._quiet)

    def forget_quiet(self, waiter: asyncio.Future[None]) -> None:
        """Stop tracking a ``quiet`` future nobody waits for any more (a timed-out
        ``wait_idle``), so that polling a kernel that stays busy keeps no garbage."""
        try:
            self._quiet.remove(waiter)
        except ValueError:
            pass

    def retire(self, act: Activation) -> None:
        """Remove a closed activation from the directory (idempotent)."""
        if act.closed:
            return
        act.closed = True
        act.cancel_timers()
        if self.directory.get(act.id) is act:
            del self.directory[act.id]
        if act.task is not None:
            self.retiring.add(act)
        act.atype.stats.active -= 1
        act.atype.stats.deactivations += 1
        if act.on_closed is not None and not act.on_closed.done():
            act.on_closed.set_result(None)

    def hand_over(self, old: Activation) -> None:
        """Move messages that reached a closing activation to its successor, in order."""
        if self.stopped:
            old.abort(KernelStopped(f"kernel stopped before {old.id} could handle them"))
            return
        cluster = self.cluster
        if cluster is not None and cluster.leaving:  # to the agent's next home
            for env in old.take_to_move():
                cluster.redeliver(env)
            return
        new = self.activation(old.id, old.atype)
        new.adopt(old)
        self.spawn(new)

    def lease_lost(self) -> None:
        """The kernel's lease is lost (``Persistence.on_lease_lost``): the claims made
        under it are gone, so every stateful activation stops serving at once
        (``Activation.fence``); the next message re-activates with a fresh claim."""
        fenced = [act for act in self.directory.values() if act.token]
        if fenced:
            log.error(
                "the kernel's lease was lost: %d stateful activations stop serving: %s",
                len(fenced),
                names(fenced),
            )
        for act in fenced:
            act.fence(
                Fenced(
                    f"{act.id}: the kernel lost its lease, and with it its claim"
                    " on the agent; the message was not handled"
                )
            )

    # -- messages that will not be handled -----------------------------------------------

    def undeliverable(
        self, env: Envelope, target: AgentId | str, reason: str, error: Exception
    ) -> None:
        """An accepted message will not reach a handler: count it as a dead letter, and
        fail its asker or publish it on ``DEAD_LETTERS``."""
        self.dead_letters += 1
        atype = self.types.get(target.type) if isinstance(target, AgentId) else None
        if atype is not None:
            atype.stats.dead_letters += 1
        self.not_handled(env, target, reason, error)

    def not_handled(
        self, env: Envelope, target: AgentId | str, reason: str, error: Exception
    ) -> None:
        """Fail ``env``'s asker with ``error``, or publish a tell or an event on
        ``DEAD_LETTERS`` (the caller has counted it)."""
        reply = env.reply
        if reply is not None:
            if not reply.done():
                reply.set_exception(error)
            self.dead_letter_store.add(env, target, reason, error)
            return
        self.publish_dead_letter(env, target, reason, error)

    def expired(self, env: Envelope, target: AgentId) -> None:
        """An ask whose asker gave up before its turn came, not run (the caller has
        counted it as expired): kept in the dead-letter store, not published (its
        asker heard of it)."""
        self.dead_letter_store.add(env, target, DeadLetterReason.EXPIRED, None)

    def handler_failed(self, env: Envelope, target: AgentId, error: BaseException) -> None:
        """A tell's or an event's handler raised: log it (rate-limited) and publish it
        as a dead letter (the worker has counted it as failed)."""
        if self.failure_log is not None:
            self.failure_log.handler_failed(target, env, error)
        self.publish_dead_letter(env, target, DeadLetterReason.HANDLER_FAILED, error)

    def unhandled(self, env: Envelope, target: AgentId, atype: AgentType) -> None:
        """An event reached an agent type with no handler for it."""
        self.undeliverable(
            env, target, DeadLetterReason.UNHANDLED_MESSAGE, unhandled_error(atype, env.payload)
        )

    def publish_dead_letter(
        self, env: Envelope, target: AgentId | str, reason: str, error: BaseException | None
    ) -> None:
        """Keep a record of ``env`` and publish a ``DeadLetter`` about it (never
        blocking; not while stopping)."""
        self.dead_letter_store.add(env, target, reason, error)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dead letter for %s (%s): %s", target, reason, error and describe(error))
        if not self.stopped:
            self.topics.publish_dead_letter(env, target, reason, error)


def check_handled(atype: AgentType, message: Any) -> None:
    """Raise unless an agent of ``atype`` has a handler for ``message``.

    Raises:
        TypeError: ``message`` is not a kerna Message.
        UnhandledMessage: no handler for its type.
    """
    if not isinstance(message, Message):
        raise TypeError(
            f"messages must be kerna.Message instances, got {type(message).__qualname__}"
        )
    if atype.handler_for(type(message)) is None:
        raise unhandled_error(atype, message)


def unhandled_error(atype: AgentType, message: Any) -> UnhandledMessage:
    handled = ", ".join(sorted(t.__qualname__ for t in atype.handled_types())) or "none"
    return UnhandledMessage(
        f"agent type {atype.name!r} has no handler for {type(message).__qualname__} "
        f"(it handles: {handled}); is a method missing @handler, or annotated with "
        "another message type?",
        agent_type=atype.name,
        message_type=type(message),
    )


def names(acts: list[Activation], shown: int = 10) -> str:
    """The ids of ``acts`` for a log line, the first ``shown`` of them."""
    text = ", ".join(str(a.id) for a in acts[:shown])
    return text if len(acts) <= shown else f"{text} and {len(acts) - shown} more"
