"""The Kernel: hosts agents in one asyncio event loop and routes messages between them.

Ownership: ``start()`` creates one root task that holds an ``asyncio.TaskGroup``; every
agent worker is a child of that group, so nothing kerna starts outlives the kernel.
Idle detection is a loop timer, not a task (``kerna._idle``). ``stop()`` runs the
shutdown as a task of its own, shielded from the caller's cancellation: it closes
intake, lets mailboxes drain within the grace period, cancels what is left, runs
``on_stop`` once per activation, closes the state backend and then ends the root task.
Every phase after the grace period is bounded by ``cancel_grace``: a task that ignores
cancellation cannot be killed, so it is named in an ERROR log and abandoned.

Accounting: every message sent to an agent is counted exactly once in its type's
``TypeStats``: ``rejected`` when the send was refused or abandoned before it entered a
mailbox, otherwise by its fate (``handled``, ``failed``, ``expired``, ``dropped`` or
``dead_letters``). A message whose handler never returns is counted when it does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import msgspec

from kerna.state import StateBackend
from kerna.state._layout import Layout, unescape
from kerna.state._replica import Replica

from ._activation import Activation, current_activation
from ._agent import Agent
from ._envelope import Envelope
from ._errors import Fenced, KernelStopped, RegistrationError, UnhandledMessage, UnknownAgent
from ._failures import describe
from ._idle import IdleCollector
from ._ids import AgentId
from ._message import Message
from ._options import check_mailbox, check_positive, check_restarts, check_seconds
from ._persistence import Persistence
from ._ref import AgentRef
from ._registry import AgentType, TypeStats, build_state_spec
from ._topics import DEAD_LETTERS, Subscription, Topics

__all__ = ["Kernel", "KernelStats", "Subscription"]

log = logging.getLogger("kerna.kernel")

_UNSET: Any = object()
_ON_STOP_BATCH = 1000


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


class Kernel:
    """An in-process agent runtime.

    Use it as an async context manager (or ``await start()`` / ``await stop()``)::

        async with Kernel() as kernel:
            kernel.register(Echo)
            pong = await kernel.ref(Echo, "a").ask(Ping(n=1), timeout=1.0)

    Args:
        ask_timeout: default ``ask`` timeout in seconds (no ask is unbounded).
        mailbox_size: default mailbox capacity per agent (1000).
        overflow: default overflow policy: ``"wait"`` (backpressure), ``"reject"``
            (``MailboxFull``) or ``"drop_oldest"`` (counted in ``stats``).
        idle_timeout: seconds without messages after which an agent is deactivated;
            ``None`` keeps agents until stopped. Default 300.
        stop_grace: default seconds ``stop()`` lets mailboxes drain.
        cancel_grace: seconds ``stop()`` waits, after the grace period, for cancelled
            handlers to end (1); ``on_stop`` hooks get what is left of the grace period
            or at least that long again. ``stop(grace)`` returns within
            ``grace + 2 * cancel_grace``, plus the time the state backend takes to
            close, whatever handlers and hooks do.
        max_restarts: default number of ``on_start`` retries before an activation fails.
        restart_backoff: first retry delay in seconds; doubles per retry.
        state: where agent state lives: a URL (``memory://`` by default, private to
            this kernel; ``sqlite:///path.db``; ``etcd://h1:2379,h2:2379``) or a
            ``StateBackend`` the caller owns (then the kernel does not close it).
        state_prefix: key prefix of this kernel's data in the backend.
        lease_ttl: seconds the kernel's lease (which holds its activation claims)
            survives without a keepalive.

    Raises:
        ValueError: an option is out of range.
    """

    DEAD_LETTERS = DEAD_LETTERS
    """Topic on which undeliverable messages are published as ``DeadLetter`` events."""

    def __init__(
        self,
        *,
        ask_timeout: float = 30.0,
        mailbox_size: int = 1000,
        overflow: str = "wait",
        idle_timeout: float | None = 300.0,
        stop_grace: float = 10.0,
        cancel_grace: float = 1.0,
        max_restarts: int = 3,
        restart_backoff: float = 0.05,
        state: str | StateBackend = "memory://",
        state_prefix: str = "kerna/",
        lease_ttl: float = 10.0,
    ) -> None:
        check_positive("ask_timeout", ask_timeout)
        check_positive("lease_ttl", lease_ttl)
        if not isinstance(state, str | StateBackend):
            raise ValueError(f"state must be a URL or a StateBackend, got {state!r}")
        Layout(state_prefix)  # validates the prefix
        check_positive("idle_timeout", idle_timeout, allow_none=True)
        check_mailbox(mailbox_size, overflow)
        check_restarts(max_restarts, restart_backoff)
        check_seconds("stop_grace", stop_grace)
        check_positive("cancel_grace", cancel_grace)
        self.ask_timeout = float(ask_timeout)
        self.mailbox_size = mailbox_size
        self.overflow = overflow
        self.idle_timeout = idle_timeout
        self.stop_grace = float(stop_grace)
        self.cancel_grace = float(cancel_grace)
        self.max_restarts = max_restarts
        self.restart_backoff = float(restart_backoff)
        self.state_url = state
        self.state_prefix = state_prefix
        self.lease_ttl = float(lease_ttl)
        self._persistence: Persistence | None = None
        self._types: dict[str, AgentType] = {}
        self._directory: dict[AgentId, Activation] = {}
        # Activations that left the directory while their worker still runs (a fenced
        # one finishing its handler and on_stop): stop waits for them too.
        self._retiring: set[Activation] = set()
        self._topics = Topics(self)
        self._ids = itertools.count(1)
        self._dead_letters = 0
        self._busy = 0
        # Workers spawned but not yet run. A sender that activates agents in a tight loop
        # yields once this passes SPAWN_BURST, so pending tasks stay bounded (and so does
        # memory) however many agents it wakes without awaiting.
        self._unstarted = 0
        self._tg: asyncio.TaskGroup | None = None
        self._root: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._quiet: asyncio.Future[None] | None = None
        self._quiet_scope: asyncio.Timeout | None = None
        self._drain_deadline = 0.0
        self._shutdown_task: asyncio.Task[None] | None = None
        self._idle: IdleCollector | None = None
        self._state = "new"
        # Closed until start(): sends before start or after stop raise KernelStopped.
        self._intake_closed = True
        self._stopped = True
        self.loop: asyncio.AbstractEventLoop = _UNSET

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Kernel:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the kernel in the running event loop.

        Raises:
            RuntimeError: already started.
        """
        if self._state != "new":
            raise RuntimeError(f"kernel already {self._state}")
        self.loop = loop = asyncio.get_running_loop()
        self._persistence = await Persistence.open(
            self.state_url, prefix=self.state_prefix, lease_ttl=self.lease_ttl
        )
        self._persistence.on_lease_lost(self._lease_lost)
        ready: asyncio.Future[None] = loop.create_future()
        self._closing = loop.create_future()
        self._root = loop.create_task(self._supervise(ready), name="kerna-kernel")
        try:
            await ready
        except asyncio.CancelledError:  # cancelled while starting: leave nothing behind
            self._root.cancel()
            try:
                await self._root
            except asyncio.CancelledError:
                pass
            self._state = "stopped"
            await self._persistence.close()
            raise
        self._root.add_done_callback(self._root_ended)
        self._idle = IdleCollector(self)
        self._state = "running"
        self._intake_closed = self._stopped = False

    async def _supervise(self, ready: asyncio.Future[None]) -> None:
        assert self._closing is not None
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            if not ready.done():
                ready.set_result(None)
            await self._closing
        self._tg = None

    def _root_ended(self, root: asyncio.Task[None]) -> None:
        """The root task ended. Before stop that is never the users' doing (workers
        report every handler error): it is KeyboardInterrupt or SystemExit on its way
        out of the loop, or a bug in kerna. Refuse further work instead of failing on
        a finished task group."""
        self._tg = None
        if self._state == "running":
            self._intake_closed = self._stopped = True
            if not root.cancelled() and root.exception() is not None:
                log.error("kernel task ended while running", exc_info=root.exception())

    @property
    def running(self) -> bool:
        """True between ``start()`` and the beginning of ``stop()``."""
        return self._state == "running" and not self._intake_closed

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully; idempotent and safe to call concurrently.

        Refuses new messages from outside agents at once (``KernelStopped``), lets agents
        finish their queued work (and the messages they send each other) for up to
        ``grace`` seconds, then cancels what is still running. Pending asks and parked
        senders get ``KernelStopped``; unhandled tells become dead letters. Finally
        ``on_stop`` runs once for every activation that started, the state backend is
        closed (releasing every claim with the kernel's lease), and no task of the
        kernel is left.

        Bounded: returns within ``grace + 2 * cancel_grace`` plus the backend's close,
        even when a handler ignores cancellation (such a task cannot be killed: it is
        named in an ERROR log and abandoned, and its asker gets ``KernelStopped``).

        The shutdown is shielded: if the caller is cancelled (``wait_for(stop(), t)``),
        it runs on to the end, and a later ``stop()`` waits for it. A later call with
        a shorter ``grace`` moves the end of the grace period earlier.

        Raises:
            ValueError: ``grace`` is negative.
        """
        grace = self.stop_grace if grace is None else grace
        check_seconds("grace", grace)
        if self._state == "new":
            self._state = "stopped"
            self._intake_closed = self._stopped = True
            return
        task = self._shutdown_task
        if task is None:
            if self._state == "stopped":
                return
            self._state = "stopping"
            self._intake_closed = True  # refuse messages from outside agents at once
            self._drain_deadline = self.loop.time() + grace
            task = self._shutdown_task = self.loop.create_task(
                self._shutdown(float(grace)), name="kerna-stop"
            )
        else:
            self._hurry(float(grace))
        await asyncio.shield(task)

    def _hurry(self, grace: float) -> None:
        """A later ``stop(grace)``: end the grace period by then, if that is sooner."""
        deadline = self.loop.time() + grace
        if deadline < self._drain_deadline:
            self._drain_deadline = deadline
            if self._quiet_scope is not None:
                self._quiet_scope.reschedule(deadline)

    async def _shutdown(self, grace: float) -> None:
        loop = self.loop
        self._intake_closed = True
        if self._idle is not None:
            self._idle.close()
        for act in self._directory.values():
            if act.timers:
                act.cancel_timers()
        stuck: list[Activation] = []  # workers that ignore cancellation
        hooks_ended = True
        end = math.inf
        try:
            if self._busy and not await self._wait_quiet() and self._busy:
                log.warning(
                    "stop: %d agents still busy after %.3gs grace; cancelling", self._busy, grace
                )
            self._stopped = True
            # Everything after the grace period shares one bound: grace + 2 x cancel_grace.
            now = loop.time()
            end = max(self._drain_deadline, now) + 2 * self.cancel_grace
            stuck = await self._cancel_workers(now + self.cancel_grace)
            hooks_ended = await self._stop_all(end)
        finally:
            # Also when this task is cancelled (the loop is shutting down): refuse
            # everything, fail what is left, and let go of the state and the lease.
            self._stopped = True
            for act in list(self._directory.values()):
                if act.task is not None and act not in stuck:
                    act.task.cancel()
                act.abort(KernelStopped(f"kernel stopped before {act.id} could handle it"))
                self._retire(act)
            try:
                if self._persistence is not None:
                    await self._persistence.close()  # releases every claim with the lease
            finally:
                self._end_root()
        if stuck or not hooks_ended:
            return  # abandoned: the root task ends when they do
        assert self._root is not None
        _, pending = await asyncio.wait({self._root}, timeout=max(end - loop.time(), 0.001))
        if pending:
            log.error("stop: kernel tasks still running after stop; abandoned")

    def _end_root(self) -> None:
        self._state = "stopped"
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)

    async def _wait_quiet(self) -> bool:
        """Wait until no worker runs, or the end of the grace period; True when quiet.

        The deadline is ``_drain_deadline``, which a later ``stop()`` may move earlier.
        """
        self._quiet = self.loop.create_future()
        try:
            async with asyncio.timeout_at(self._drain_deadline) as scope:
                self._quiet_scope = scope
                await self._quiet
        except TimeoutError:
            return False
        finally:
            self._quiet = self._quiet_scope = None
        return True

    async def _cancel_workers(self, deadline: float) -> list[Activation]:
        """Cancel every running worker and wait until ``deadline`` for them to end.

        Returns the activations whose workers ignored the cancellation (logged); every
        activation's queue is then failed (``Activation.abort``), including the queues of
        workers cancelled before they ever ran.
        """
        acts = [*self._directory.values(), *self._retiring]
        workers = {act.task: act for act in acts if act.task is not None}
        if not workers:
            return []
        for task in workers:
            task.cancel()
        _, pending = await asyncio.wait(workers, timeout=max(0.0, deadline - self.loop.time()))
        stuck = [workers[task] for task in pending]
        if stuck:
            log.error(
                "stop: %d agents ignore cancellation after %.3gs: %s. A task that swallows "
                "CancelledError cannot be killed: it is abandoned and runs on; the messages "
                "it holds fail with KernelStopped",
                len(stuck),
                self.cancel_grace,
                _names(stuck),
            )
        for act in acts:
            if act.task is not None and act.task.done():  # cancelled before it started
                act.task = None
                self._worker_exited(act)
            act.abort(KernelStopped(f"kernel stopped while {act.id} was busy"))
        return stuck

    async def _stop_all(self, end: float) -> bool:
        """Run ``on_stop`` once for every started activation, by ``end``.

        Hooks still running half a ``cancel_grace`` before ``end`` are cancelled (the
        rest are skipped); False if one of them ignores that until ``end``.
        """
        deadline = end - self.cancel_grace / 2
        pending = [
            a
            for a in self._directory.values()
            if a.agent is not None and not a.closing and a.task is None
        ]
        tg = self._tg
        for i in range(0, len(pending), _ON_STOP_BATCH):
            batch = pending[i : i + _ON_STOP_BATCH]
            if tg is None:
                return True
            tasks = {tg.create_task(self._final_stop(a)): a for a in batch}
            _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - self.loop.time()))
            if late:
                for task in late:
                    task.cancel()
                _, stuck = await asyncio.wait(late, timeout=max(0.0, end - self.loop.time()))
                log.warning(
                    "stop: on_stop did not finish in time for %d agents (%d skipped): %s",
                    len(late),
                    len(pending) - i - len(batch),
                    _names([tasks[t] for t in late]),
                )
                if stuck:
                    log.error(
                        "stop: on_stop of %s ignores cancellation: abandoned",
                        _names([tasks[t] for t in stuck]),
                    )
                return not stuck
        return True

    async def _final_stop(self, act: Activation) -> None:
        act.closing = True
        await act.run_on_stop()

    # -- registration and references -------------------------------------------------

    def register(
        self,
        agent_class: type[Agent],
        *,
        name: str | None = None,
        mailbox_size: int | None = None,
        overflow: str | None = None,
        idle_timeout: float | None = _UNSET,
        max_restarts: int | None = None,
        restart_backoff: float | None = None,
        cancel_at_deadline: bool = False,
        conflict_retries: int = 0,
        factory: Callable[[], Agent] | None = None,
    ) -> str:
        """Register an agent class; returns its type name.

        Args:
            agent_class: an ``Agent`` subclass; the kernel creates instances as ``cls()``.
            name: the agent type name (default: the class name).
            mailbox_size, overflow, idle_timeout, max_restarts, restart_backoff: override
                the kernel's defaults for this type.
            cancel_at_deadline: cancel a running handler when its message's deadline
                passes (default: let it finish; its late reply is dropped and counted).
            factory: builds the agent instead of ``agent_class()``, e.g. to inject
                dependencies (``factory=lambda: Indexer(client)``); must return an
                instance of ``agent_class``.
            conflict_retries: re-run a handler up to this many times when its
                ``self.save`` loses a compare-and-swap (``Conflict``); the state is
                reloaded before each re-run. Default 0: the asker gets the Conflict.

        Raises:
            RegistrationError: not an Agent subclass, the name is taken, or a handler is
                invalid (not async, no Message annotation, two handlers for one type).
            ValueError: an option is out of range.
        """
        if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
            raise RegistrationError(f"register() takes an Agent subclass, got {agent_class!r}")
        name = agent_class.__name__ if name is None else name
        if not isinstance(name, str) or not name or "/" in name:
            raise RegistrationError(
                f"agent type name must be a non-empty str without '/': {name!r}"
            )
        if name in self._types:
            raise RegistrationError(
                f"agent type {name!r} is already registered "
                f"(by {self._types[name].cls.__qualname__})"
            )
        capacity = self.mailbox_size if mailbox_size is None else mailbox_size
        policy = self.overflow if overflow is None else overflow
        check_mailbox(capacity, policy)
        idle = self.idle_timeout if idle_timeout is _UNSET else idle_timeout
        check_positive("idle_timeout", idle, allow_none=True)
        restarts = self.max_restarts if max_restarts is None else max_restarts
        backoff = self.restart_backoff if restart_backoff is None else restart_backoff
        check_restarts(restarts, backoff)
        if isinstance(conflict_retries, bool) or not isinstance(conflict_retries, int):
            raise ValueError(f"conflict_retries must be an int >= 0, got {conflict_retries!r}")
        if conflict_retries < 0:
            raise ValueError(f"conflict_retries must be an int >= 0, got {conflict_retries!r}")
        if factory is not None and not callable(factory):
            raise RegistrationError(f"factory must be a callable returning an agent: {factory!r}")
        state_spec = build_state_spec(agent_class, agent_class.__qualname__)
        self._types[name] = AgentType(
            agent_class,
            name,
            capacity=capacity,
            overflow=policy,
            idle_timeout=idle,
            max_restarts=restarts,
            restart_backoff=float(backoff),
            cancel_at_deadline=bool(cancel_at_deadline),
            has_on_stop=agent_class.on_stop is not Agent.on_stop,
            state_spec=state_spec,
            conflict_retries=conflict_retries,
            factory=factory,
        )
        return name

    def ref(self, agent_type: type[Agent] | str, key: str) -> AgentRef:
        """A reference to the agent ``AgentId(type, key)``; does not activate it.

        ``agent_type`` is a registered class (its registered name is used) or a name.

        Raises:
            TypeError: ``key`` is not a string.
        """
        if not isinstance(key, str):
            raise TypeError(f"agent key must be a str, got {type(key).__qualname__}")
        return AgentRef(self, AgentId(self._type_name(agent_type), key))

    def _type_name(self, agent_type: type[Agent] | str) -> str:
        if isinstance(agent_type, str):
            return agent_type
        if isinstance(agent_type, type):
            for name, atype in self._types.items():
                if atype.cls is agent_type:
                    return name
            return agent_type.__name__
        raise TypeError(f"agent type must be an Agent class or a name, got {agent_type!r}")

    # -- pub/sub ---------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        agent_type: type[Agent] | str,
        *,
        key: Callable[[Any], str] | None = None,
    ) -> Subscription:
        """Deliver every event published on ``topic`` to an agent of ``agent_type``.

        ``key(event)`` picks the agent key per event (default: always ``"default"``).
        Every subscription gets the same event object. Returns a handle for
        ``unsubscribe``.

        Raises:
            TypeError: ``topic`` is not a string or ``key`` is not callable.
        """
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty str, got {topic!r}")
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable event -> str, got {key!r}")
        return self._topics.subscribe(topic, self._type_name(agent_type), key)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription; unknown ones are ignored."""
        self._topics.unsubscribe(subscription)

    async def publish(self, topic: str, message: Message) -> None:
        """Publish an event to every subscription of ``topic``.

        One envelope, shared by reference, reaches every subscriber. Waits for room in
        ``wait`` mailboxes; a subscriber that cannot take the event (unknown type, no
        handler, ``reject`` mailbox full, failed activation, key function raising)
        gets nothing and the event becomes a dead letter for it: the other subscribers
        still receive it.

        Raises:
            TypeError: ``message`` is not a kerna.Message.
            KernelStopped: the kernel is stopping.
        """
        sender = current_activation.get()
        if self._intake_closed and (sender is None or self._stopped):
            raise self._refusal(f"event on {topic!r} not published")
        if not isinstance(message, Message):
            raise TypeError(
                f"events must be kerna.Message instances, got {type(message).__qualname__}"
            )
        await self._topics.publish(topic, message, sender)

    # -- introspection -----------------------------------------------------------------

    def stats(self) -> KernelStats:
        """A snapshot of per-agent-type counters, queue depths and dead letters."""
        queued: dict[str, int] = dict.fromkeys(self._types, 0)
        for act in self._directory.values():
            if act.mailbox or act.waiters:
                queued[act.atype.name] += act.queued()
        types = {
            name: msgspec.structs.replace(atype.stats, queued=queued[name])
            for name, atype in self._types.items()
        }
        return KernelStats(types=types, dead_letters=self._dead_letters, running=self._busy)

    # -- machinery used by activations and refs ----------------------------------------

    def _store(self) -> Persistence:
        persistence = self._persistence
        if persistence is None:
            raise self._refusal("state is not available")
        return persistence

    @property
    def state_backend(self) -> StateBackend:
        """The state backend (available once started)."""
        return self._store().backend

    def replica(self, agent_type: type[Agent] | str) -> Replica[Any]:
        """A local mirror of every stored state of ``agent_type`` (keyed by agent key),
        kept fresh by a watch: writes from any kernel on the same backend show up.

        Use it as an async context manager (``async with kernel.replica(Counter) as r``);
        ``r.get(key)`` returns the decoded state or None.

        Raises:
            UnknownAgent: the type is not registered here.
            TypeError: the type declares no state.
        """
        name = self._type_name(agent_type)
        atype = self._types.get(name)
        if atype is None:
            raise UnknownAgent(f"no agent type {name!r} is registered")
        spec = atype.state_spec
        if spec is None:
            raise TypeError(f"agent type {name!r} declares no state")
        store = self._store()
        prefix = store.layout.states_of(name)
        sourcing = spec.sourcing
        decoder = spec.decoder

        def decode(data: bytes) -> Any:
            if sourcing is not None:  # event-sourced: the state key holds a snapshot
                return sourcing.decode_snapshot(data, name)[0]
            return decoder.decode(data)

        return Replica(
            store.backend, prefix, decode=decode, key_of=lambda k: unescape(k[len(prefix) :])
        )

    def _refusal(self, what: str) -> KernelStopped:
        if self._state == "new":
            return KernelStopped(
                f"kernel is not running ({what}): use 'async with Kernel()' or start()"
            )
        return KernelStopped(f"kernel is {self._state} ({what})")

    def _refuse(self, target: AgentId, what: str) -> KernelStopped:
        """A send to ``target`` refused because the kernel is not running (counted)."""
        atype = self._types.get(target.type)
        if atype is not None:
            atype.stats.rejected += 1
        return self._refusal(what)

    def _lease_lost(self) -> None:
        """The kernel's lease is lost (``Persistence.on_lease_lost``): the claims made
        under it are gone, so every stateful activation stops serving at once
        (``Activation.fence``); the next message re-activates with a fresh claim."""
        fenced = [act for act in self._directory.values() if act.token]
        if fenced:
            log.error(
                "the kernel's lease was lost: %d stateful activations stop serving: %s",
                len(fenced),
                _names(fenced),
            )
        for act in fenced:
            act.fence(
                Fenced(
                    f"{act.id}: the kernel lost its lease, and with it its claim"
                    " on the agent; the message was not handled"
                )
            )

    def _activation(self, agent_id: AgentId, atype: AgentType) -> Activation:
        act = self._directory.get(agent_id)
        if act is None:
            act = self._directory[agent_id] = Activation(self, atype, agent_id)
            atype.stats.active += 1
            atype.stats.activations += 1
        return act

    def _spawn(self, act: Activation) -> None:
        tg = self._tg
        if tg is None:
            raise KernelStopped("kernel is not running: use 'async with Kernel()' or start()")
        self._busy += 1
        self._unstarted += 1
        act.task = tg.create_task(act.run())

    def _worker_exited(self, act: Activation) -> None:
        if act.closed:
            self._retiring.discard(act)
        self._busy -= 1
        if self._busy == 0 and self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)
        idle = self._idle
        if idle is not None:
            idle.idle(act)

    def _retire(self, act: Activation) -> None:
        """Remove a closed activation from the directory."""
        if act.closed:
            return
        act.closed = True
        act.cancel_timers()
        if self._directory.get(act.id) is act:
            del self._directory[act.id]
        if act.task is not None:
            self._retiring.add(act)
        act.atype.stats.active -= 1
        if act.on_closed is not None and not act.on_closed.done():
            act.on_closed.set_result(None)

    def _hand_over(self, old: Activation) -> None:
        """Move messages that reached a closing activation to its successor, in order."""
        if self._stopped:
            old.abort(KernelStopped(f"kernel stopped before {old.id} could handle them"))
            return
        new = self._activation(old.id, old.atype)
        new.mailbox, new.waiters = old.mailbox, old.waiters
        old.mailbox = old.waiters = None
        self._spawn(new)

    def _undeliverable(
        self, env: Envelope, target: AgentId | str, reason: str, error: Exception
    ) -> None:
        """An accepted message will not reach a handler: count it as a dead letter, and
        fail its asker or publish it on ``DEAD_LETTERS``."""
        self._dead_letters += 1
        atype = self._types.get(target.type) if isinstance(target, AgentId) else None
        if atype is not None:
            atype.stats.dead_letters += 1
        self._not_handled(env, target, reason, error)

    def _not_handled(
        self, env: Envelope, target: AgentId | str, reason: str, error: Exception
    ) -> None:
        """Fail ``env``'s asker with ``error``, or publish a tell or an event on
        ``DEAD_LETTERS`` (the caller has counted it)."""
        reply = env.reply
        if reply is not None:
            if not reply.done():
                reply.set_exception(error)
            return
        self._publish_dead_letter(env, target, reason, error)

    def _unhandled(self, env: Envelope, target: AgentId, atype: AgentType) -> None:
        error = UnhandledMessage(
            f"agent type {atype.name!r} has no handler for {type(env.payload).__qualname__}"
        )
        self._undeliverable(env, target, "unhandled_message", error)

    def _publish_dead_letter(
        self, env: Envelope, target: AgentId | str, reason: str, error: BaseException | None
    ) -> None:
        """Publish a ``DeadLetter`` about ``env`` (never blocking; not while stopping)."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dead letter for %s (%s): %s", target, reason, error and describe(error))
        if not self._stopped:
            self._topics.publish_dead_letter(env, target, reason, error)


def _names(acts: list[Activation], shown: int = 10) -> str:
    names = ", ".join(str(a.id) for a in acts[:shown])
    return names if len(acts) <= shown else f"{names} and {len(acts) - shown} more"
