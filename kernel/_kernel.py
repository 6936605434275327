"""The Kernel: hosts agents in one asyncio event loop and routes messages between them.

Ownership: ``start()`` creates one root task that holds an ``asyncio.TaskGroup``; every
agent worker is a child of that group, so nothing kerna starts outlives the kernel.
Idle detection is a loop timer, not a task. ``stop()`` closes intake, lets mailboxes
drain within the grace period, cancels what is left, runs ``on_stop`` once per
activation and then ends the root task.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from kerna.state import StateBackend
from kerna.state._layout import Layout, unescape
from kerna.state._replica import Replica

from ._activation import Activation, current_activation
from ._agent import Agent
from ._envelope import Envelope
from ._errors import KernelStopped, RegistrationError, UnhandledMessage, UnknownAgent
from ._ids import AgentId
from ._message import Message
from ._options import check_mailbox, check_positive, check_restarts
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
        if not (isinstance(stop_grace, int | float) and stop_grace >= 0):
            raise ValueError(f"stop_grace must be >= 0 seconds, got {stop_grace!r}")
        self.ask_timeout = float(ask_timeout)
        self.mailbox_size = mailbox_size
        self.overflow = overflow
        self.idle_timeout = idle_timeout
        self.stop_grace = float(stop_grace)
        self.max_restarts = max_restarts
        self.restart_backoff = float(restart_backoff)
        self.state_url = state
        self.state_prefix = state_prefix
        self.lease_ttl = float(lease_ttl)
        self._persistence: Persistence | None = None
        self._types: dict[str, AgentType] = {}
        self._directory: dict[AgentId, Activation] = {}
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
        self._sweeper: asyncio.TimerHandle | None = None
        self._state = "new"
        self._stopped_event = asyncio.Event()
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
        self._state = "running"
        self._intake_closed = self._stopped = False
        self._schedule_sweep()

    async def _supervise(self, ready: asyncio.Future[None]) -> None:
        assert self._closing is not None
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            if not ready.done():
                ready.set_result(None)
            await self._closing
        self._tg = None

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
        ``on_stop`` runs once for every activation that started, and no task of the
        kernel is left.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            self._intake_closed = self._stopped = True
            return
        if self._state == "stopping":
            await self._stopped_event.wait()
            return
        self._state = "stopping"
        try:
            await self._shutdown(self.stop_grace if grace is None else grace)
        finally:
            self._state = "stopped"
            self._stopped_event.set()

    async def _shutdown(self, grace: float) -> None:
        loop = self.loop
        deadline = loop.time() + max(0.0, grace)
        self._intake_closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for act in self._directory.values():
            if act.timers:
                act.cancel_timers()
        if self._busy and not await self._wait_quiet(deadline):
            log.warning(
                "stop: %d agents still busy after %.3gs grace; cancelling", self._busy, grace
            )
        self._stopped = True
        if self._busy:
            for act in list(self._directory.values()):
                if act.task is not None:
                    act.task.cancel()
            if not await self._wait_quiet(loop.time() + 5.0):
                log.error("stop: %d agents ignore cancellation", self._busy)
        await self._stop_all(max(deadline, loop.time() + 1.0))
        if self._persistence is not None:
            await self._persistence.close()  # releases every claim with the lease
        assert self._closing is not None
        assert self._root is not None
        self._closing.set_result(None)
        await self._root

    async def _wait_quiet(self, deadline: float) -> bool:
        """Wait until no worker runs, or the deadline; True when quiet."""
        self._quiet = self.loop.create_future()
        try:
            async with asyncio.timeout_at(deadline):
                await self._quiet
        except TimeoutError:
            return False
        finally:
            self._quiet = None
        return True

    async def _stop_all(self, deadline: float) -> None:
        """Run ``on_stop`` once for every started activation still in the directory."""
        pending = [a for a in self._directory.values() if a.agent is not None and not a.closing]
        try:
            async with asyncio.timeout_at(deadline):
                for i in range(0, len(pending), _ON_STOP_BATCH):
                    batch = pending[i : i + _ON_STOP_BATCH]
                    await asyncio.gather(*(self._final_stop(a) for a in batch))
        except TimeoutError:
            log.warning("stop: on_stop did not finish for every agent in time")
        for act in list(self._directory.values()):
            self._retire(act)

    async def _final_stop(self, act: Activation) -> None:
        act.closing = True
        if not act.atype.has_on_stop or act.agent is None:
            return
        try:
            await act.agent.on_stop()
        except Exception as exc:
            act.atype.stats.failed += 1
            log.warning("%s on_stop raised %r", act.id, exc, exc_info=exc)

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
        if self._state == "running":
            self._schedule_sweep()
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

    def _worker_exited(self) -> None:
        self._busy -= 1
        if self._busy == 0 and self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)

    def _retire(self, act: Activation) -> None:
        """Remove a closed activation from the directory."""
        if act.closed:
            return
        act.closed = True
        act.cancel_timers()
        if self._directory.get(act.id) is act:
            del self._directory[act.id]
        act.atype.stats.active -= 1
        if act.on_closed is not None and not act.on_closed.done():
            act.on_closed.set_result(None)

    def _hand_over(self, old: Activation) -> None:
        """Move messages that reached a closing activation to its successor, in order."""
        if self._stopped:
            old._abort(KernelStopped(f"kernel stopped before {old.id} could handle them"))
            return
        new = self._activation(old.id, old.atype)
        new.mailbox, new.waiters = old.mailbox, old.waiters
        old.mailbox = old.waiters = None
        self._spawn(new)

    def _undeliverable(
        self, env: Envelope, target: AgentId | str, reason: str, error: Exception
    ) -> None:
        """An accepted message will not be handled: fail its asker or dead-letter it."""
        reply = env.reply
        if reply is not None:
            if not reply.done():
                reply.set_exception(error)
            return
        atype = self._types.get(target.type) if isinstance(target, AgentId) else None
        self._dead_letter(env, target, reason, error, atype)

    def _unhandled(self, env: Envelope, target: AgentId, atype: AgentType) -> None:
        error = UnhandledMessage(
            f"agent type {atype.name!r} has no handler for {type(env.payload).__qualname__}"
        )
        self._undeliverable(env, target, "unhandled_message", error)

    def _dead_letter(
        self,
        env: Envelope,
        target: AgentId | str,
        reason: str,
        error: BaseException | None,
        atype: AgentType | None = None,
    ) -> None:
        """Count a dead letter and publish it on ``DEAD_LETTERS`` (never blocking)."""
        self._dead_letters += 1
        if atype is not None:
            atype.stats.dead_letters += 1
        log.debug("dead letter for %s (%s): %r", target, reason, error)
        if not self._stopped:
            self._topics.publish_dead_letter(env, target, reason, error)

    # -- idle deactivation -----------------------------------------------------------

    def _schedule_sweep(self) -> None:
        """(Re)arm the idle sweep timer at a quarter of the shortest idle timeout."""
        timeouts = [t.idle_timeout for t in self._types.values() if t.idle_timeout is not None]
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if timeouts and not self._intake_closed:
            self._sweeper = self.loop.call_later(min(timeouts) / 4, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for act in list(self._directory.values()):
            timeout = act.atype.idle_timeout
            if (
                timeout is None
                or act.task is not None
                or act.mailbox
                or act.closed
                or now - act.last_active < timeout
            ):
                continue
            if act.atype.has_on_stop and act.agent is not None:
                act.request_deactivation()
            else:
                self._retire(act)  # nothing to run: leave without a task
        self._schedule_sweep()
