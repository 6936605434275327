"""Virtual time for tests: timers, timeouts and backoffs run instantly, in order.

``VirtualClock().run(main)`` runs ``main()`` on an event loop whose ``loop.time()`` is
virtual: whenever the loop has nothing to run and no I/O is ready, the clock jumps to
its next timer. Everything kerna times runs on ``loop.time()``, so an hour of agent
life takes milliseconds. How to use it (``asyncio.Runner``, anyio's pytest plugin) and
what it cannot see are in ``VirtualClock``'s docstring.

How it works: a selector event loop asks its selector to wait for I/O for as long as
its next timer is away, and only when nothing else is ready to run. The loop made here
has a selector that, instead of sleeping, polls for I/O and, when none is ready, moves
the clock by that timeout: straight to the timer. Only public asyncio API is used (a
``SelectorEventLoop`` subclass with its own ``time()`` and a ``selector=``).

The ``looptime`` pytest plugin was weighed for this and left out: its pytest
integration works with pytest-asyncio only (installed next to anyio's plugin alone, it
fails every test that uses a fixture), it swaps the loop's class and patches asyncio's
private selector attribute, it has no ``advance``, and it jumps past a sqlite thread's
reply as well.
"""

from __future__ import annotations

import asyncio
import math
import selectors
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["VirtualClock"]

T = TypeVar("T")


class VirtualClock:
    """Virtual time for the asyncio event loops it makes (trio's ``MockClock``).

    Their ``loop.time()`` is the clock's time, which moves only when the clock moves it:
    whenever such a loop has nothing to run (every task waits) and no I/O is ready, the
    clock jumps straight to the loop's next timer; ``advance(seconds)`` moves it by hand.
    kerna's agent timers, ask timeouts and deadlines, idle deactivation, restart
    backoff, stop's grace period and lease refreshes all run on ``loop.time()``, as do
    ``asyncio.sleep``, ``asyncio.timeout`` and anyio's cancel scopes, so they take no
    real time and happen in the same order every run::

        async def scenario() -> float:
            async with Kernel(idle_timeout=60) as kernel:
                ...
                await asyncio.sleep(3600)  # an hour passes at once
            return asyncio.get_running_loop().time()

        assert VirtualClock().run(scenario) >= 3600

    In pytest with anyio's plugin, the clock's loop factory goes into ``anyio_backend``
    (each test then runs on a loop, and a clock, of its own)::

        @pytest.fixture
        def clock() -> VirtualClock:
            return VirtualClock()

        @pytest.fixture
        def anyio_backend(clock: VirtualClock) -> tuple[str, dict[str, object]]:
            return "asyncio", {"loop_factory": clock.new_event_loop}

    ``asyncio.Runner(loop_factory=clock.new_event_loop)`` works anywhere, and
    pytest-asyncio takes the factory through an event loop policy.
    ``VirtualClock.current()`` finds the clock from inside its loop. Usually one clock
    drives one loop.

    What the clock cannot see is work outside the loop: a reply from a thread (the
    sqlite backend's), a subprocess or the network (etcd) is I/O that has not arrived
    yet, so with the default ``autojump_threshold=0`` the clock may jump past it, to an
    ask timeout for instance. Use virtual time with ``memory://`` state (the default:
    it runs on the loop), or let the loop wait a real-time margin for such work before
    each jump (``autojump_threshold=0.05``), trio's answer to the same question. The
    loop is a plain selector loop (uvloop keeps its own clock). What is read from
    ``time.time()`` or ``time.monotonic()`` is real time: the event log's wall-clock
    stamps and, today, the memory and sqlite backends' lease deadlines (their
    keepalives run on virtual time, so such a lease lapses only if the loop stays busy
    for a whole TTL of real time, never by virtual time).

    Args:
        start: the virtual time the clock starts at (``loop.time()`` at first).
        autojump_threshold: real seconds the loop must have had nothing to do before
            the clock jumps to its next timer: 0 (the default) jumps at once; ``inf``
            never jumps, so time moves only by ``advance``.

    Raises:
        ValueError: ``start`` is not finite, or ``autojump_threshold`` is negative.
    """

    def __init__(self, *, start: float = 0.0, autojump_threshold: float = 0.0) -> None:
        if not _is_number(start) or not math.isfinite(start):
            raise ValueError(f"start must be a finite number of seconds, got {start!r}")
        self._now = float(start)
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._threshold = 0.0
        self.autojump_threshold = autojump_threshold

    def __repr__(self) -> str:
        return f"VirtualClock(time={self._now!r}, autojump_threshold={self._threshold!r})"

    @property
    def autojump_threshold(self) -> float:
        """Real seconds of nothing to do before a jump (0: at once; inf: never)."""
        return self._threshold

    @autojump_threshold.setter
    def autojump_threshold(self, seconds: float) -> None:
        if not _is_number(seconds) or not seconds >= 0:
            raise ValueError(
                f"autojump_threshold must be a number of seconds >= 0 (inf: never jump),"
                f" got {seconds!r}"
            )
        self._threshold = float(seconds)
        self._wake()

    def time(self) -> float:
        """The virtual time (what ``loop.time()`` returns on this clock's loops)."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the virtual time forward by ``seconds``; the timers that came due run
        at the loop's next iteration (``await asyncio.sleep(0)`` lets them).

        Raises:
            ValueError: ``seconds`` is negative or not finite (time never goes back).
        """
        if not _is_number(seconds) or not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"advance takes a finite number of seconds >= 0, got {seconds!r}")
        now = self._now
        later = now + seconds
        # A step below the float resolution still moves: a jump to a timer that close
        # would otherwise repeat forever.
        self._now = later if later > now or seconds == 0 else math.nextafter(now, math.inf)
        self._wake()

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new asyncio event loop whose time is this clock's (a loop factory for
        ``asyncio.Runner``, anyio's ``loop_factory`` option, pytest-asyncio)."""
        loop = _VirtualTimeLoop(self)
        self._loops.add(loop)
        return loop

    def run(self, main: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``main(*args)`` to completion on a new loop of this clock; its result.

        Like ``asyncio.run``: the loop is closed afterwards, with its async generators
        and default executor.
        """
        with asyncio.Runner(loop_factory=self.new_event_loop) as runner:
            return runner.run(_awaited(main, args))

    @staticmethod
    def current() -> VirtualClock:
        """The clock of the running event loop.

        Raises:
            RuntimeError: no loop runs, or it is not on a virtual clock.
        """
        loop = asyncio.get_running_loop()
        if not isinstance(loop, _VirtualTimeLoop):
            raise RuntimeError(
                "the running event loop has no virtual clock: run it on one made by"
                " VirtualClock().new_event_loop (or clock.run(main))"
            )
        return loop.clock

    def _wake(self) -> None:
        """Let the clock's loops see a change made from another thread: one waiting for
        I/O only (threshold inf) would otherwise not look at its timers again."""
        for loop in list(self._loops):
            if loop.is_closed() or _running_here(loop):
                continue
            try:
                loop.call_soon_threadsafe(_nothing)
            except RuntimeError:  # closed meanwhile
                pass


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose time is a ``VirtualClock``'s."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        super().__init__(_JumpingSelector(clock))

    def time(self) -> float:
        return self.clock.time()


class _JumpingSelector(selectors.BaseSelector):
    """The loop's selector, which moves the clock instead of sleeping.

    A selector loop asks its selector to wait for I/O for as long as its next timer is
    away (``select(timeout)``), and only when it has nothing else to run (a ready
    callback makes the timeout 0; no timer makes it None). So a wait with a timeout is
    the moment the loop is idle: I/O that is ready is returned as usual, and otherwise
    the clock jumps by ``timeout``, straight to that timer.
    """

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self._inner = selectors.DefaultSelector()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        inner = self._inner
        ready = inner.select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        threshold = self._clock.autojump_threshold
        if timeout is None or threshold == math.inf:
            return inner.select(None)  # only I/O (or a wake-up from another thread) can help
        if threshold > 0:
            ready = inner.select(threshold)
            if ready:
                return ready
        self._clock.advance(timeout)
        return []

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


async def _awaited(main: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await main(*args)


def _running_here(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _nothing() -> None:
    pass


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
