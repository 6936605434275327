"""The Kernel: the public face of one runtime hosting agents in an asyncio event loop.

``Kernel`` validates options and arguments and hands everything else to its private
``Runtime`` (``kerna._runtime``: the directory, the types, the delivery path) and
``Lifecycle`` (``kerna._lifecycle``: start and the bounded, shielded stop). Its
middleware chain (``kerna._kernel_middleware``), its members about other nodes
(``kerna._kernel_cluster``), topics
(``kerna._kernel_topics``), stored state (``kerna._kernel_state``) and its read-only
views (``kerna._kernel_views``) come from mixins.

Accounting: every message sent to an agent is counted exactly once in its type's
``TypeStats``: ``rejected`` when the send was refused or abandoned before it entered a
mailbox, otherwise by its fate (``handled``, ``failed``, ``expired``, ``dropped`` or
``dead_letters``). A message whose handler never returns is counted when it does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from kerna.state import StateBackend
from kerna.state._layout import Layout

from ._activation import current_activation
from ._agent import Agent
from ._chain import check_middleware, load_plugins
from ._cluster import Cluster, check_cluster, default_node_id
from ._cluster_placement import PlacementStrategy, check_placement
from ._errors import ConfigError, IdleTimeout, RegistrationError, UsageError
from ._failure_log import check_level
from ._ids import AgentId
from ._kernel_cluster import KernelCluster
from ._kernel_middleware import KernelMiddleware
from ._kernel_state import KernelState
from ._kernel_topics import KernelTopics
from ._kernel_views import KernelStats, KernelViews
from ._lifecycle import Lifecycle
from ._log_context import install_log_context
from ._options import (
    WrongType,
    check_mailbox,
    check_positive,
    check_restarts,
    check_seconds,
    check_timeout,
)
from ._ref import AgentRef
from ._registry import AgentType, build_state_spec, type_name
from ._remote import Remote
from ._runtime import Phase, Runtime, names
from ._timing import TypeTiming, Watcher
from ._topics import DEAD_LETTERS, Subscription

T = TypeVar("T")

# From the import of Kernel on, so that a format naming %(correlation_id)s works for
# the records an application makes before its first kernel too (kerna._log_context).
install_log_context()

__all__ = ["Kernel", "KernelStats", "Subscription"]

log = logging.getLogger("kerna.kernel")


class _Default:
    """The default of an option whose None means something (``help()`` shows its name)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_KERNEL_DEFAULT: Any = _Default("<kernel default>")


class Kernel(KernelMiddleware, KernelCluster, KernelTopics, KernelState, KernelViews):
    """An in-process agent runtime.

    Use it as an async context manager (or ``await start()`` / ``await stop()``)::

        async with Kernel() as kernel:
            kernel.register(Echo)
            pong = await kernel.ref(Echo, "a").ask(Ping(n=1), timeout=1.0)

    Logging: importing ``Kernel`` wraps the log record factory (and making one wraps
    it again if it was replaced since), so every record made afterwards carries
    ``agent_id`` and ``correlation_id``: the agent and the conversation of the message
    it handles when the record is made, None for both outside any agent
    (``%(correlation_id)s`` works in any format; ``kerna._log_context``).

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
        transport: where this kernel listens for other nodes, e.g.
            ``"tcp://127.0.0.1:7101"`` or ``"inproc://a"`` (``kerna.transports``); None
            (the default): no other node can reach it. ``ref(..., node=address)`` then
            reaches agents on the node listening at ``address``.
        transport_options: options of that transport (``secret``, ``ssl``, ...).
        cluster: the name of the cluster this kernel is a node of (None: none). Its
            keys live under ``{state_prefix}{cluster}/``: members, activation claims
            and states. A cluster needs a transport and a store its nodes share (an
            ``etcd://`` URL, or one ``StateBackend`` given to every kernel of an
            in-process cluster; ``memory://`` is refused). The node registers itself
            under its lease (``lease_ttl``; a keepalive every third of it): a node
            killed without stopping stays a member, and its agents unreachable, until
            its lease expires; a stopped one leaves at once. ``members()`` lists the
            live nodes; ``ref(Type, key)`` reaches the agent wherever its placement
            puts it (``register(..., placement=)``).
        node_id: this node's id in the cluster, and the name in its activation claims
            (default ``hostname-pid``, ``hostname-pid-N`` for the N-th kernel of a
            process). Two live nodes cannot share one.
        secret: the cluster's shared secret, handed to the transport (the tcp
            handshake proves it); or ``secret_file``, a file holding it (surrounding
            whitespace stripped).
        secret_file: see ``secret``.
        placement_strategy: chooses an agent's home among the live nodes hosting its
            type (a ``PlacementStrategy``); default ``Rendezvous`` hashing.
        middleware: the kernel's middleware chain, outermost first: objects with an
            ``async def handle(ctx, call_next)`` (around every handler) and/or an
            ``async def send(ctx, call_next)`` (around every tell and ask), see
            ``kerna.plugins.Middleware``; ``use`` adds more. Empty by default, and an
            empty chain costs nothing.
        plugins: names of installed plug-ins (the ``kerna.plugins`` entry point group)
            to import and add to the chain after ``middleware``: an allowlist, nothing
            else of the group is imported (default: none).
        failure_log_level: the level at which a handler failure nobody else hears of
            (a tell's or an event's) is logged on ``kerna.activation``: WARNING by default,
            at most 10 records per agent type per minute.
        dead_letters_kept: how many dead letters the kernel keeps for
            ``dead_letters()`` and ``replay_dead_letters()`` (1000; 0 keeps none): the
            oldest is evicted for a new one, counted in ``dead_letter_stats()``.
        timing: measure, per agent type, how long messages wait in mailboxes and
            how long handlers take (``timings()``) for one message in ``timing`` (by
            message id): 1 times every message, 16 one in sixteen (what ``kerna
            node`` does), 0 (the default) none. Each timed message costs three clock
            reads (``kerna._timing``).

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
        failure_log_level: int | str = logging.WARNING,
        transport: str | None = None,
        transport_options: Mapping[str, Any] | None = None,
        cluster: str | None = None,
        node_id: str | None = None,
        secret: bytes | str | None = None,
        secret_file: str | os.PathLike[str] | None = None,
        placement_strategy: PlacementStrategy | None = None,
        dead_letters_kept: int = 1000,
        timing: int = 0,
        middleware: Sequence[object] = (),
        plugins: Sequence[str] | None = None,
    ) -> None:
        check_positive("ask_timeout", ask_timeout)
        chain = check_middleware(middleware, "Kernel(middleware=...)", kernel=True)
        if plugins is not None:
            chain += load_plugins(plugins, "Kernel(plugins=...)")
        check_positive("lease_ttl", lease_ttl)
        if not isinstance(state, str | StateBackend):
            raise WrongType(f"state must be a URL or a StateBackend, got {state!r}")
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
        self.failure_log_level = check_level(failure_log_level)
        if transport is not None and not isinstance(transport, str):
            raise WrongType(f"transport must be a URL or None, got {transport!r}")
        if transport_options is not None and not isinstance(transport_options, Mapping):
            raise WrongType(f"transport_options must be a mapping, got {transport_options!r}")
        self.transport = transport
        options = check_cluster(
            cluster=cluster,
            node_id=node_id,
            secret=secret,
            secret_file=secret_file,
            transport=transport,
            transport_options=transport_options,
            state=state,
        )
        if placement_strategy is not None and not isinstance(placement_strategy, PlacementStrategy):
            raise WrongType(
                f"placement_strategy must have a choose(agent, nodes) method, got"
                f" {placement_strategy!r}"
            )
        self.cluster = cluster
        self._node_id = node_id or default_node_id()
        self.dead_letters_kept = dead_letters_kept
        if isinstance(timing, bool) or not isinstance(timing, int):
            raise WrongType(f"timing must be an int >= 0 (1 in N messages), got {timing!r}")
        if timing < 0:
            raise ValueError(f"timing must be an int >= 0 (1 in N messages), got {timing!r}")
        self.timing = timing
        self._timing_watchers: list[Watcher] = []
        self._runtime = Runtime(self)  # checks dead_letters_kept (DeadLetterStore)
        if transport is not None:  # a bad URL or option fails here, not at start
            self._runtime.remote = Remote.open(self._runtime, transport, options)
            self._runtime.remote.codec.node_id = self._node_id
        if cluster is not None:
            self._runtime.cluster = Cluster(
                self._runtime, cluster, self._node_id, placement_strategy
            )
        self._lifecycle = Lifecycle(self._runtime)
        install_log_context()  # records carry agent_id and correlation_id (_log_context)
        self._middleware: tuple[object, ...] = ()
        self._stop_told = False  # middleware's stopped(kernel) called
        if chain:
            self.use(*chain)

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Kernel:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the kernel in the running event loop (in a cluster: join it).

        Raises:
            RuntimeError: already started.
            ConfigError: another live node of the cluster has this ``node_id``.
            Unavailable: the cluster's store cannot be reached.
        """
        prefix = self.state_prefix
        if self.cluster is not None:
            prefix = f"{prefix}{self.cluster}/"
        await self._lifecycle.start(
            self.state_url, prefix=prefix, lease_ttl=self.lease_ttl, node_id=self._node_id
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the kernel runs in (set by ``start``)."""
        loop: asyncio.AbstractEventLoop = self._runtime.loop
        return loop

    @property
    def running(self) -> bool:
        """True between ``start()`` and the beginning of ``stop()``."""
        return self._runtime.phase is Phase.RUNNING

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully; idempotent and safe to call concurrently.

        Refuses new messages from outside agents at once (``KernelStopped``), lets agents
        finish their queued work (and the messages they, and the tasks of
        ``create_task``, send) for up to ``grace`` seconds, then cancels what is still
        running. Pending asks and parked senders get ``KernelStopped``; unhandled tells
        become dead letters. Askers on other nodes get that ``KernelStopped`` in an error
        reply (a ``RemoteError``), sent before the transport closes (within the bound
        below), so they do not see the connection break instead (``NodeLost``).
        Finally ``on_stop`` runs once for every activation that started, the state
        backend is closed (releasing every claim with the kernel's lease), and no task
        of the kernel is left.

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
        await self._lifecycle.stop(grace, self.cancel_grace)
        if not self._stop_told:
            self._stop_told = True
            self._tell_stopped()

    # -- registration and references -------------------------------------------------

    def register(
        self,
        agent_class: type[Agent],
        *,
        name: str | None = None,
        mailbox_size: int | None = None,
        overflow: str | None = None,
        idle_timeout: float | None = _KERNEL_DEFAULT,
        max_restarts: int | None = None,
        restart_backoff: float | None = None,
        cancel_at_deadline: bool = False,
        conflict_retries: int = 0,
        factory: Callable[[], Agent] | None = None,
        placement: str | None = None,
        middleware: Sequence[object] = (),
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
            placement: where agents of this type live in a cluster (ignored without
                one): ``"directory"`` (the default; strict single activation: the home
                claims the agent in the store, and the claim is the authority until it
                deactivates), ``"hash"`` (volatile agents: the home by rendezvous
                hashing, no store write, a duplicate possible while nodes' member views
                differ) or ``"local"`` (one activation per node hosting the type).
                Stateful types always claim: only ``"directory"``.
            middleware: this type's own middleware chain, inside the kernel's (after
                the class's, ``@kerna.plugins.middleware(...)``): around its handlers
                and around the sends its agents make.

        Raises:
            RegistrationError: not an Agent subclass, the name is taken, or a handler is
                invalid (not async, no Message annotation, two handlers for one type),
                or a placement other than ``"directory"`` for a stateful type.
            ValueError: an option is out of range.
            TypeError: ``cancel_at_deadline`` is not a bool, or ``middleware`` holds
                something that is not a middleware.
        """
        if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
            raise RegistrationError(f"register() takes an Agent subclass, got {agent_class!r}")
        name = agent_class.__name__ if name is None else name
        if not isinstance(name, str) or not name or "/" in name:
            raise RegistrationError(
                f"agent type name must be a non-empty str without '/': {name!r}"
            )
        if name in self._runtime.types:
            raise RegistrationError(
                f"agent type {name!r} is already registered "
                f"(by {self._runtime.types[name].cls.__qualname__})"
            )
        capacity = self.mailbox_size if mailbox_size is None else mailbox_size
        policy = self.overflow if overflow is None else overflow
        check_mailbox(capacity, policy)
        idle = self.idle_timeout if idle_timeout is _KERNEL_DEFAULT else idle_timeout
        check_positive("idle_timeout", idle, allow_none=True)
        restarts = self.max_restarts if max_restarts is None else max_restarts
        backoff = self.restart_backoff if restart_backoff is None else restart_backoff
        check_restarts(restarts, backoff)
        if isinstance(conflict_retries, bool) or not isinstance(conflict_retries, int):
            raise WrongType(f"conflict_retries must be an int >= 0, got {conflict_retries!r}")
        if conflict_retries < 0:
            raise ValueError(f"conflict_retries must be an int >= 0, got {conflict_retries!r}")
        if not isinstance(cancel_at_deadline, bool):
            raise TypeError(f"cancel_at_deadline must be a bool, got {cancel_at_deadline!r}")
        if factory is not None and not callable(factory):
            raise RegistrationError(f"factory must be a callable returning an agent: {factory!r}")
        own = check_middleware(
            (*getattr(agent_class, "__kerna_middleware__", ()), *middleware),
            f"register({agent_class.__qualname__})",
        )
        state_spec = build_state_spec(agent_class, agent_class.__qualname__)
        placement = check_placement(placement, name, stateful=state_spec is not None)
        self._runtime.types[name] = atype = AgentType(
            agent_class,
            name,
            capacity=capacity,
            overflow=policy,
            idle_timeout=idle,
            max_restarts=restarts,
            restart_backoff=float(backoff),
            cancel_at_deadline=cancel_at_deadline,
            has_on_stop=agent_class.on_stop is not Agent.on_stop,
            state_spec=state_spec,
            conflict_retries=conflict_retries,
            factory=factory,
            placement=placement,
            claims=self.cluster is not None and placement == "directory",
        )
        if self.timing:
            atype.timing = TypeTiming(self.timing, atype.name, self._timing_watchers)
        if own or self._middleware:
            atype.middleware = own
            atype.chain(self._middleware)
        remote = self._runtime.remote
        if remote is not None:  # what other nodes may send this type, by wire tag
            try:
                remote.codec.types.add_handled(atype.handled_types())
            except RegistrationError:
                del self._runtime.types[name]
                raise
            remote.types_changed()  # peers met from now on hear of this type's schemas
        if self._runtime.cluster is not None:
            self._runtime.cluster.types_changed()  # other nodes learn it hosts the type
        return name

    def ref(self, agent_type: type[Agent] | str, key: str, *, node: str | None = None) -> AgentRef:
        """A reference to the agent ``AgentId(type, key)``; does not activate it.

        ``agent_type`` is a registered class (its registered name is used) or a name.
        With ``node`` (another kernel's ``address``), messages go to the agent on that
        node over this kernel's transport; the type need not be registered here. In a
        cluster, without ``node``, messages go wherever the type's placement puts the
        agent, on this node or another that hosts the type (by name for a type this
        node does not host).

        Raises:
            TypeError: ``key`` or ``node`` is not a string.
            ConfigError: ``node`` is given but this kernel has no transport.
        """
        if not isinstance(key, str):
            raise TypeError(f"agent key must be a str, got {type(key).__qualname__}")
        ref = AgentRef(self._runtime, AgentId(type_name(self._runtime.types, agent_type), key))
        if node is not None:
            if not isinstance(node, str):
                raise TypeError(f"node must be an address (str), got {node!r}")
            remote = self._runtime.remote
            if remote is None:
                raise ConfigError(
                    f"cannot reach {node}: this kernel has no transport "
                    "(Kernel(transport='tcp://host:port'))"
                )
            ref.route = remote.route(node)
        return ref

    # -- tasks and timing ------------------------------------------------------------

    def create_task(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None
    ) -> asyncio.Task[T]:
        """Run ``coro`` as a task the kernel owns, not its caller: cancelling the
        handler or asker that started it does not cancel it (``kerna.plugins``' shared
        computations and batches run so). It counts as work for ``wait_idle`` and
        ``stop``'s grace period, during which the sends it makes itself are taken (as
        an agent's are, not an outside caller's); ``stop`` then cancels and awaits it
        with the workers.
        What it raises is its own (read it from the task): it fails no agent. It copies
        the caller's context: its sends carry whatever message that agent handles then.

        Raises:
            KernelStopped: the kernel is not running (nor draining); ``coro`` is closed.
        """
        return self._runtime.spawn_task(coro, name)

    def watch_timings(self, watcher: Callable[[str, str, float], None]) -> None:
        """Call ``watcher(type_name, kind, seconds)`` for each timed observation as it
        is made: ``kind`` is ``"wait"`` (mailbox to handler start) or ``"handling"``,
        for the one message in ``timing`` that the kernel times (the ones
        ``timings()`` counts), of the types registered now and later. It runs in the
        agent's worker between two messages: keep it short. One that raises is
        logged and removed.

        Raises:
            UsageError: the kernel does not time messages (``Kernel(timing=0)``).
            TypeError: ``watcher`` is not callable.
        """
        if not callable(watcher):
            raise TypeError(f"watch_timings takes a callable, got {watcher!r}")
        if not self.timing:
            raise UsageError("watch_timings needs a kernel that times messages: Kernel(timing=N)")
        self._timing_watchers.append(watcher)
        for atype in self._runtime.types.values():
            if atype.timing is not None:
                atype.timing.watch(watcher)

    # -- introspection -----------------------------------------------------------------

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every mailbox is empty and no handler runs (without stopping).

        Messages that handlers send each other count as work: this returns once the
        whole cascade has settled. Timers that have not fired, and deferred replies not
        yet sent, do not keep the kernel busy; tasks of ``create_task`` do.

        Args:
            timeout: seconds to wait at most; ``None``: the kernel's ``ask_timeout``.

        Raises:
            IdleTimeout: still busy after ``timeout`` (a ``TimeoutError``).
            KernelStopped: the kernel is not running.
            UsageError: called from inside a handler (it would wait for itself).
            TypeError: ``timeout`` is not a number.
            ValueError: ``timeout`` is not positive and finite.
        """
        rt = self._runtime
        if timeout is None:
            timeout = self.ask_timeout
        else:
            check_timeout(timeout, "wait_idle timeout")
        if current_activation.get() is not None:
            raise UsageError("wait_idle() from inside a handler would wait for itself")
        if rt.stopped:
            raise rt.refusal("wait_idle")
        quiet = rt.quiet()
        try:
            async with asyncio.timeout(timeout):
                await quiet
        except TimeoutError:
            running = [act for act in rt.directory.values() if act.task is not None]
            raise IdleTimeout(
                f"kernel still busy after {timeout:.3g}s ({rt.busy - len(rt.tasks)} agents"
                " running"
                + (f": {names(running)}" if running else "")
                + (f"; {len(rt.tasks)} kernel tasks)" if rt.tasks else ")"),
                busy=rt.busy,
                timeout=timeout,
            ) from None
        finally:
            if quiet.cancelled():  # timed out or the caller was cancelled
                rt.forget_quiet(quiet)
