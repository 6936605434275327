"""The sync twins of what ``Kernel.replica`` and ``Kernel.event_log`` return.

Each reads on the ``BlockingKernel``'s loop thread, through the kernel's ``_LoopThread``
(``kerna._blocking``), and blocks the calling thread meanwhile.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kerna.state import EventLog, EventRecord, Replica

if TYPE_CHECKING:
    from ._blocking import _LoopThread

__all__ = ["BlockingEventLog", "BlockingReplica"]

T = TypeVar("T")


class BlockingReplica(Generic[T]):
    """The sync twin of the replica ``Kernel.replica`` returns: a local mirror of every
    stored state of one agent type, kept fresh by a watch on the loop thread.

    Use it as a context manager (``with kernel.replica(Counter) as r``); ``r.get(key)``
    returns the decoded state or None. Every read runs on the loop thread, so it never
    sees the mirror half-updated.
    """

    __slots__ = ("_loop", "_replica")

    def __init__(self, loop: _LoopThread, replica: Replica[T]) -> None:
        self._loop = loop
        self._replica = replica

    def __enter__(self) -> BlockingReplica[T]:
        self._loop.run(self._replica.__aenter__, "replica not opened")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop following the watch."""
        self._loop.run_if_running(self._replica.aclose)

    @property
    def revision(self) -> int:
        """The backend revision the mirror is at."""
        return self._loop.call(lambda: self._replica.revision)

    def get(self, key: str) -> T | None:
        """The state of the agent with this key, or None."""
        return self._loop.call(functools.partial(self._replica.get, key))

    def items(self) -> list[tuple[str, T]]:
        """Every (agent key, state) pair, as of now."""
        return self._loop.call(lambda: list(self._replica.items()))

    def __contains__(self, key: object) -> bool:
        return self._loop.call(functools.partial(self._replica.__contains__, key))

    def __len__(self) -> int:
        return self._loop.call(self._replica.__len__)

    def wait_for(self, revision: int, timeout: float | None = None) -> None:
        """Return once the mirror applied ``revision`` (a write under its prefix).

        Raises:
            TimeoutError: not within ``timeout`` seconds.
            KernelStopped: the kernel does not run.
        """
        self._loop.run(
            functools.partial(self._replica.wait_for, revision, timeout), "replica not read"
        )


class BlockingEventLog(Generic[T]):
    """The sync twin of the event log ``Kernel.event_log`` returns: an event-sourced
    agent's audit trail and time travel, read on the loop thread."""

    __slots__ = ("_log", "_loop")

    def __init__(self, loop: _LoopThread, log: EventLog[T]) -> None:
        self._loop = loop
        self._log = log

    @property
    def agent_type(self) -> str:
        """The agent's type name."""
        return self._log.agent_type

    @property
    def key(self) -> str:
        """The agent's key."""
        return self._log.key

    def pages(self, *, after: int = 0, upto: int | None = None) -> Iterator[list[EventRecord[Any]]]:
        """The records with ``after < seq <= upto``, one backend page at a time (each
        page read when the iteration gets to it).

        Raises:
            DecodeError: a record does not decode (names agent, sequence and type).
            KernelStopped: the kernel does not run.
        """
        pages = self._log.pages(after=after, upto=upto)
        try:
            while True:
                try:
                    page = self._loop.run(functools.partial(_next, pages), "event log not read")
                except StopAsyncIteration:
                    return
                yield page
        finally:
            if isinstance(pages, AsyncGenerator):  # left early: let it clean up
                self._loop.run_if_running(pages.aclose)

    def events(self, *, after: int = 0, upto: int | None = None) -> Iterator[EventRecord[Any]]:
        """The records with ``after < seq <= upto``, in order (paged reads).

        Raises:
            DecodeError: a record does not decode (names agent, sequence and type).
            KernelStopped: the kernel does not run.
        """
        for page in self.pages(after=after, upto=upto):
            yield from page

    def state_at(self, seq: int | None = None) -> tuple[T, int]:
        """Rebuild the state as of ``seq`` (default: the latest) by full replay; the
        state and the sequence number it reflects.

        Raises:
            DecodeError: a record does not decode.
            KernelStopped: the kernel does not run.
        """
        return self._loop.run(functools.partial(self._log.state_at, seq), "event log not read")


async def _next(pages: AsyncIterator[list[EventRecord[Any]]]) -> list[EventRecord[Any]]:
    return await anext(pages)
