"""Sync embedding: run a Kernel on a background thread and call it from sync code.

For Flask, Django, scripts and notebooks::

    with BlockingKernel(ask_timeout=5) as kernel:
        kernel.register(Echo)
        pong = kernel.ref(Echo, "a").ask(Ping(n=1), timeout=1.0)

``BlockingKernel`` has ``Kernel``'s surface (the same constructor options, methods and
errors), each call blocking the calling thread instead of being awaited. Between
``start()`` and ``stop()`` the kernel and its agents live on one event-loop thread (an
anyio blocking portal); every call from any other thread is marshalled onto it, so
agents keep their one-message-at-a-time guarantee. Before ``start()`` and after
``stop()`` no loop thread exists: what ``Kernel`` allows then (``register``,
``subscribe``, ``ref``, ``stats``, ...) runs in the calling thread, and sends raise
``KernelStopped``, as they do on ``Kernel``. Like a ``Kernel``, a stopped
``BlockingKernel`` does not start again. Do not call these methods from inside an agent
(the loop thread): use the agent's async API there.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from kerna.state import StateBackend

from ._agent import Agent
from ._blocking_state import BlockingEventLog, BlockingReplica
from ._cluster_members import Member
from ._cluster_placement import PlacementStrategy
from ._dead_letters import DeadLetterRecord, DeadLetterStats, ReplayResult
from ._delivery_order import DeliveryStats
from ._errors import KernelStopped, UsageError
from ._ids import AgentId
from ._kernel import Kernel, KernelStats, Subscription
from ._message import Askable, Message, ReplyT, Request
from ._options import check_seconds, check_timeout
from ._ref import AgentRef
from ._timing import TypeTimings

__all__ = ["BlockingKernel", "BlockingRef"]

T = TypeVar("T")


class _Session:
    """One run of the loop thread, from ``start()`` to the end of ``stop()``."""

    __slots__ = ("closed", "manager", "portal", "thread_id")

    def __init__(self, manager: AbstractContextManager[BlockingPortal]) -> None:
        self.manager = manager
        self.portal = manager.__enter__()
        self.thread_id = self.portal.call(threading.get_ident)
        self.closed = threading.Event()


class _LoopThread:
    """The loop thread a ``BlockingKernel`` runs on: the one way its kernel, refs and
    replicas call into the kernel (``run`` for what ``Kernel`` awaits, ``call`` for what
    it does not).

    Invariant: ``_session`` is set exactly while the thread runs; a caller that took it
    just before ``stop()`` ended it sees the portal refuse the call and then acts as if
    it had come after the stop.
    """

    __slots__ = ("_lock", "_session", "_stopped")

    def __init__(self) -> None:
        self._lock = threading.RLock()  # held through start(), which may end the session
        self._session: _Session | None = None
        self._stopped = False

    def start(self, start_kernel: Callable[[], Awaitable[None]]) -> None:
        with self._lock:  # concurrent starts: the second is told the kernel runs
            if self._stopped:
                raise RuntimeError("BlockingKernel already stopped")
            session = self._session
            fresh = session is None
            if session is None:
                manager = start_blocking_portal("asyncio", name="kerna-blocking-kernel")
                session = self._session = _Session(manager)
            try:
                session.portal.call(start_kernel)  # started already: Kernel says so
            except BaseException:
                if fresh:
                    self._end(session)
                raise

    def stop(self, stop_kernel: Callable[[], Awaitable[None]]) -> None:
        with self._lock:
            self._stopped = True
            session = self._session
        if session is None:
            return
        try:
            # A concurrent stop() calls Kernel.stop too: it shortens the grace if asked
            # and waits for the same shutdown.
            session.portal.call(stop_kernel)
        except RuntimeError:
            if self._session is session:
                raise
        finally:
            self._end(session)

    def _end(self, session: _Session) -> None:
        with self._lock:
            mine = self._session is session
            if mine:
                self._session = None
        if mine:
            try:
                session.manager.__exit__(None, None, None)  # waits for calls in flight
            finally:
                session.closed.set()
        else:
            session.closed.wait()  # another stop() is ending it

    def refused(self, what: str) -> KernelStopped:
        if self._stopped:
            return KernelStopped(f"BlockingKernel is stopped ({what})")
        return KernelStopped(
            f"BlockingKernel is not running ({what}): use 'with BlockingKernel()' or start()"
        )

    def run(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        """Await ``fn()`` on the loop thread; ``KernelStopped`` (saying ``what`` was not
        done) when the thread does not run."""
        session = self._entered()
        if session is None:
            raise self.refused(what)
        try:
            return session.portal.call(fn)
        except RuntimeError:
            if self._session is not session:  # stop() ended the portal under this call
                raise self.refused(what) from None
            raise

    def run_if_running(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Await ``fn()`` on the loop thread if it runs; nothing otherwise."""
        session = self._entered()
        if session is None:
            return
        try:
            session.portal.call(fn)
        except RuntimeError:
            if self._session is session:
                raise

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the loop thread while it runs; in this thread otherwise (no loop
        runs then, so nothing else touches the kernel)."""
        session = self._entered()
        if session is None:
            return fn()
        try:
            return session.portal.call(fn)
        except RuntimeError:
            if self._session is session:
                raise
        session.closed.wait()  # stop() ended the portal under this call
        return fn()

    def _entered(self) -> _Session | None:
        session = self._session
        if session is not None and threading.get_ident() == session.thread_id:
            raise UsageError(
                "BlockingKernel methods block, so they cannot be called on the kernel's own"
                " loop thread (from an agent): use the agent's async API (self.ref(...))"
            )
        return session


class BlockingRef:
    """The sync twin of ``AgentRef``: each call blocks the calling thread.

    Before the kernel started and after it stopped, ``tell`` and ``ask`` raise
    ``KernelStopped``, as ``AgentRef``'s do.
    """

    __slots__ = ("_kernel", "_loop", "_ref")

    def __init__(self, kernel: BlockingKernel, loop: _LoopThread, ref: AgentRef) -> None:
        self._kernel = kernel
        self._loop = loop
        self._ref = ref

    @property
    def id(self) -> AgentId:
        """The agent's id."""
        return self._ref.id

    @property
    def kernel(self) -> BlockingKernel:
        """The kernel this ref sends through."""
        return self._kernel

    def __repr__(self) -> str:
        return f"BlockingRef({self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockingRef) and other._ref == self._ref

    def __hash__(self) -> int:
        return hash(self._ref)

    def tell(self, message: Message, *, headers: Mapping[str, str] | None = None) -> None:
        """See ``AgentRef.tell``; raises the same errors in the calling thread."""
        what = f"{type(message).__qualname__} not sent"
        self._loop.run(functools.partial(self._ref.tell, message, headers=headers), what)

    # The result type follows the request, as for AgentRef.ask.
    @overload
    def ask(
        self,
        message: Request[ReplyT],
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ReplyT: ...
    @overload
    def ask(
        self,
        message: Askable[ReplyT],
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ReplyT: ...
    def ask(
        self,
        message: Any,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """See ``AgentRef.ask``; raises the same errors in the calling thread."""
        what = f"{type(message).__qualname__} not sent"
        ask = functools.partial(self._ref.ask, message, timeout=timeout, headers=headers)
        return self._loop.run(ask, what)

    def locate(self) -> str | None:
        """See ``AgentRef.locate`` (None while the kernel does not run, as there);
        raises the same errors in the calling thread."""
        try:
            return self._loop.run(self._ref.locate, "locate")
        except KernelStopped:
            return None

    def deactivate(self) -> None:
        """See ``AgentRef.deactivate``; does nothing while the kernel does not run (no
        agent is active then)."""
        self._loop.run_if_running(self._ref.deactivate)


class BlockingKernel:
    """A ``Kernel`` on its own event-loop thread, driven synchronously.

    Takes the same options as ``Kernel`` (see there) and raises the same errors: a bad
    option at construction, ``KernelStopped`` for a send before ``start()`` or after
    ``stop()``. Use it as a context manager, or call ``start()`` and ``stop()``.

    Raises:
        ValueError: an option is out of range.
    """

    DEAD_LETTERS = Kernel.DEAD_LETTERS
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
        self._kernel = Kernel(
            ask_timeout=ask_timeout,
            mailbox_size=mailbox_size,
            overflow=overflow,
            idle_timeout=idle_timeout,
            stop_grace=stop_grace,
            cancel_grace=cancel_grace,
            max_restarts=max_restarts,
            restart_backoff=restart_backoff,
            state=state,
            state_prefix=state_prefix,
            lease_ttl=lease_ttl,
            failure_log_level=failure_log_level,
            transport=transport,
            transport_options=transport_options,
            cluster=cluster,
            node_id=node_id,
            secret=secret,
            secret_file=secret_file,
            placement_strategy=placement_strategy,
            dead_letters_kept=dead_letters_kept,
            timing=timing,
            middleware=middleware,
            plugins=plugins,
        )
        self._loop = _LoopThread()

    def __enter__(self) -> BlockingKernel:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the loop thread and the kernel on it (see ``Kernel.start``).

        Raises:
            RuntimeError: already started, or stopped.
        """
        self._loop.start(self._kernel.start)

    def stop(self, grace: float | None = None) -> None:
        """Stop the kernel (see ``Kernel.stop``) and end the loop thread; idempotent.

        Raises:
            ValueError: ``grace`` is negative (the kernel runs on).
        """
        if grace is not None:
            check_seconds("grace", grace)
        self._loop.stop(functools.partial(self._kernel.stop, grace))

    @property
    def running(self) -> bool:
        """True between ``start()`` and the beginning of ``stop()``."""
        return self._loop.call(lambda: self._kernel.running)

    @property
    def kernel(self) -> Kernel:
        """The underlying async kernel (while it runs, use it only from its loop thread)."""
        return self._kernel

    def register(self, agent_class: type[Agent], **options: Any) -> str:
        """See ``Kernel.register`` (the same options and errors)."""
        return self._loop.call(functools.partial(self._kernel.register, agent_class, **options))

    def ref(
        self, agent_type: type[Agent] | str, key: str, *, node: str | None = None
    ) -> BlockingRef:
        """See ``Kernel.ref``."""
        ref = self._loop.call(functools.partial(self._kernel.ref, agent_type, key, node=node))
        return BlockingRef(self, self._loop, ref)

    @property
    def address(self) -> str | None:
        """See ``Kernel.address``."""
        return self._kernel.address

    def members(self) -> list[Member]:
        """See ``Kernel.members``."""
        return self._loop.call(self._kernel.members)

    @property
    def joined(self) -> bool:
        """See ``Kernel.joined``."""
        return self._loop.call(lambda: self._kernel.joined)

    def wait_members(
        self, condition: Callable[[list[Member]], bool], timeout: float = 10.0
    ) -> list[Member]:
        """See ``Kernel.wait_members``; raises the same errors in the calling thread."""
        wait = functools.partial(self._kernel.wait_members, condition, timeout)
        return self._loop.run(wait, "wait_members")

    def use(self, *middleware: object) -> None:
        """See ``Kernel.use``."""
        self._loop.call(functools.partial(self._kernel.use, *middleware))

    @property
    def middleware(self) -> tuple[object, ...]:
        """See ``Kernel.middleware``."""
        return self._kernel.middleware

    @property
    def node_id(self) -> str:
        """See ``Kernel.node_id``."""
        return self._kernel.node_id

    def schema_mismatches(self) -> dict[str, list[str]]:
        """See ``Kernel.schema_mismatches``."""
        return self._kernel.schema_mismatches()

    def subscribe(
        self,
        topic: str,
        agent_type: type[Agent] | str,
        *,
        key: Callable[[Any], str] | None = None,
    ) -> Subscription:
        """See ``Kernel.subscribe``."""
        return self._loop.call(
            functools.partial(self._kernel.subscribe, topic, agent_type, key=key)
        )

    def unsubscribe(self, subscription: Subscription) -> None:
        """See ``Kernel.unsubscribe``."""
        self._loop.call(functools.partial(self._kernel.unsubscribe, subscription))

    def publish(
        self, topic: str, message: Message, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """See ``Kernel.publish``; raises the same errors in the calling thread."""
        what = f"event on {topic!r} not published"
        publish = functools.partial(self._kernel.publish, topic, message, headers=headers)
        self._loop.run(publish, what)

    def wait_idle(self, timeout: float | None = None) -> None:
        """See ``Kernel.wait_idle``: block until every mailbox is empty and no handler
        runs; raises the same errors in the calling thread."""
        if timeout is not None:
            check_timeout(timeout)  # a wrong timeout is named even when not running
        self._loop.run(functools.partial(self._kernel.wait_idle, timeout), "wait_idle")

    def stats(self) -> KernelStats:
        """See ``Kernel.stats``; after ``stop()``, the final counters."""
        return self._loop.call(self._kernel.stats)

    def dead_letters(
        self,
        *,
        reason: str | None = None,
        agent_type: type[Agent] | str | None = None,
        message_type: type[Message] | str | None = None,
        limit: int | None = None,
    ) -> list[DeadLetterRecord]:
        """See ``Kernel.dead_letters``."""
        return self._loop.call(
            functools.partial(
                self._kernel.dead_letters,
                reason=reason,
                agent_type=agent_type,
                message_type=message_type,
                limit=limit,
            )
        )

    def dead_letter_stats(self) -> DeadLetterStats:
        """See ``Kernel.dead_letter_stats``."""
        return self._loop.call(self._kernel.dead_letter_stats)

    def replay_dead_letters(
        self,
        *,
        reason: str | None = None,
        agent_type: type[Agent] | str | None = None,
        message_type: type[Message] | str | None = None,
        seqs: list[int] | None = None,
    ) -> ReplayResult:
        """See ``Kernel.replay_dead_letters``; blocks until every resend is accepted."""
        replay = functools.partial(
            self._kernel.replay_dead_letters,
            reason=reason,
            agent_type=agent_type,
            message_type=message_type,
            seqs=seqs,
        )
        return self._loop.run(replay, "no dead letter replayed")

    def timings(self) -> dict[str, TypeTimings]:
        """See ``Kernel.timings``."""
        return self._loop.call(self._kernel.timings)

    def watch_timings(self, watcher: Callable[[str, str, float], None]) -> None:
        """See ``Kernel.watch_timings`` (``watcher`` runs on the kernel's loop thread).

        Raises:
            UsageError: the kernel does not time messages (``timing=0``).
            TypeError: ``watcher`` is not callable.
        """
        self._loop.call(functools.partial(self._kernel.watch_timings, watcher))

    def agent_classes(self) -> dict[str, type[Agent]]:
        """See ``Kernel.agent_classes``."""
        return self._loop.call(self._kernel.agent_classes)

    def message_types(self) -> dict[str, type[Message]]:
        """See ``Kernel.message_types``."""
        return self._loop.call(self._kernel.message_types)

    def delivery_stats(self) -> DeliveryStats:
        """See ``Kernel.delivery_stats``."""
        return self._loop.call(self._kernel.delivery_stats)

    def transport_stats(self) -> dict[str, int]:
        """See ``Kernel.transport_stats``."""
        return self._loop.call(self._kernel.transport_stats)

    def event_log(self, agent_type: type[Agent] | str, key: str) -> BlockingEventLog[Any]:
        """See ``Kernel.event_log``: the same checks and errors; reads block."""
        log = self._loop.call(functools.partial(self._kernel.event_log, agent_type, key))
        return BlockingEventLog(self._loop, log)

    def replica(self, agent_type: type[Agent] | str) -> BlockingReplica[Any]:
        """See ``Kernel.replica``; use it as a context manager (``with``)."""
        return BlockingReplica(
            self._loop, self._loop.call(functools.partial(self._kernel.replica, agent_type))
        )
