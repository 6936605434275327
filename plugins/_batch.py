"""``@batched``: single asks accumulated into one call of a batch handler.

::

    class Model(Agent):
        @batched(max_size=64, max_wait=0.005)     # replaces @handler
        async def infer(self, batch: list[Prompt]) -> list[Completion]: ...

    completion = await kernel.ref(Model, "m").ask(Prompt(...))

The element type of the batch parameter (``Prompt``) is what the agent handles, and the
element type of the return annotation (``Completion``) is the reply registration checks
against ``Prompt``'s ``Request[...]``. The choices, where the issue left room:

- Scope: one batcher per activation (the batch handler is a method of that agent: a
  model loaded by ``Model("m")`` serves ``Model("m")``'s asks). One batch runs at a time
  per activation (Ray Serve's default); asks that arrive meanwhile form the next one.
- Flush: when ``max_size`` asks wait, or ``max_wait`` seconds (on the loop's clock)
  after the first ask of the batch arrived, whichever is first; a batch whose wait
  passed while the previous one ran goes as soon as that one ends.
- Mailbox: each ask defers its reply (``Agent.defer_reply``) and the batch runs as a
  task the kernel owns (``Kernel.create_task``), so the mailbox keeps filling the next
  batch while one runs. The batch handler serves many messages: it has no single
  ``self.context`` (it reads, and its sends carry, that of whatever message the agent
  handles at that moment), and it runs beside the agent's other handlers.
- Results map back by position. A slot holding an exception instance fails only that
  asker (``RemoteError`` carrying it); annotate ``-> list[Completion | Exception]`` to
  say so (the exception alternatives are not part of the reply type). A batch handler
  that raises fails every asker of that batch with it, and the next batch runs as
  usual; one that returns a wrong number of results (or not a list) fails every asker
  of that batch with a ``ValueError`` that says how many were expected.
- Cancelled callers: an ask whose asker gave up (timed out, cancelled) before its
  batch is called is dropped from the batch (``BatchStats.expired``); one that gives up
  during the call gets nothing (its result is a late reply). Neither holds the batcher
  up: it never waits on an asker.
- Tells: a tell to a batched handler joins a batch like an ask; its result is dropped,
  and its failure is logged (``kerna.plugins``) as there is no asker to send it to.
- Stop: askers still waiting for their batch get ``KernelStopped``; a running batch
  counts as work for ``stop``'s grace period and is cancelled after it.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import logging
import math
import types
import typing
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Union

import msgspec

from kerna import Agent, KernelStopped, Message, PendingReply, RegistrationError, handler

if TYPE_CHECKING:
    from kerna import AgentId, Kernel

__all__ = ["BatchStats", "batch_stats", "batched"]

log = logging.getLogger("kerna.plugins")

A = TypeVar("A", bound=Agent)
M = TypeVar("M", bound=Message)
R = TypeVar("R")

_BATCH_MARK = "__kerna_batch__"
_SEQUENCES = ("list", "List", "Sequence", "typing.List", "typing.Sequence")


class BatchStats(msgspec.Struct, frozen=True):
    """Counters of one ``@batched`` handler in one kernel (``batch_stats``).

    Attributes:
        batches: calls of the batch handler.
        items: messages passed to those calls.
        largest: the largest batch so far.
        expired: asks dropped before their batch was called (their asker gave up).
        failed: batches whose handler raised or returned a wrong number of results.
    """

    batches: int = 0
    items: int = 0
    largest: int = 0
    expired: int = 0
    failed: int = 0


class _Counters:
    __slots__ = ("batches", "expired", "failed", "items", "largest")

    def __init__(self) -> None:
        self.batches = self.items = self.largest = self.expired = self.failed = 0


class _Item:
    __slots__ = ("message", "pending")

    def __init__(self, message: Any, pending: PendingReply | None) -> None:
        self.message = message
        self.pending = pending  # None: a tell

    @property
    def gone(self) -> bool:
        """Nobody waits for this item's result (its asker gave up, or stop failed it)."""
        pending = self.pending
        return pending is not None and (pending.expired or pending.sent)


class _Batched:
    """What ``@batched`` keeps for one handler: options, batchers, counters."""

    __slots__ = ("batchers", "counters", "fn", "max_size", "max_wait", "where")

    def __init__(self, fn: Callable[..., Any], max_size: int, max_wait: float) -> None:
        self.fn = fn
        self.max_size = max_size
        self.max_wait = max_wait
        self.where = fn.__qualname__
        self.batchers: weakref.WeakKeyDictionary[Kernel, dict[AgentId, _Batcher]] = (
            weakref.WeakKeyDictionary()
        )
        self.counters: weakref.WeakKeyDictionary[Kernel, _Counters] = weakref.WeakKeyDictionary()

    def batcher(self, agent: Agent) -> _Batcher:
        kernel = agent.kernel
        home = self.batchers.get(kernel)
        if home is None:
            home = self.batchers[kernel] = {}
            self.counters[kernel] = _Counters()
        batcher = home.get(agent.id)
        if batcher is None or batcher.agent is not agent:  # a new activation: a new batcher
            batcher = home[agent.id] = _Batcher(self, kernel, agent, home, self.counters[kernel])
        return batcher


class _Batcher:
    """The waiting asks of one activation and the batch running for it."""

    __slots__ = ("agent", "counters", "due", "home", "items", "kernel", "running", "spec", "timer")

    def __init__(
        self,
        spec: _Batched,
        kernel: Kernel,
        agent: Agent,
        home: dict[AgentId, _Batcher],
        counters: _Counters,
    ) -> None:
        self.spec = spec
        self.kernel = kernel
        self.agent = agent
        self.home = home
        self.counters = counters
        self.items: list[_Item] = []
        self.timer: asyncio.TimerHandle | None = None
        self.running: asyncio.Task[None] | None = None
        self.due = False  # the waiting items' max_wait passed while a batch ran

    def add(self, item: _Item) -> None:
        items = self.items
        items.append(item)
        if len(items) >= self.spec.max_size:
            if self.running is None:
                self.flush()
        elif self.timer is None and not self.due:
            self.timer = self.kernel.loop.call_later(self.spec.max_wait, self._waited)

    def _waited(self) -> None:
        self.timer = None
        if self.running is None:
            self.flush()
        else:
            self.due = True

    def flush(self) -> None:
        """Call the batch handler with up to ``max_size`` waiting items still wanted."""
        self.due = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        size = self.spec.max_size
        taken, self.items = self.items[:size], self.items[size:]
        if self.items:
            self.due = True  # they waited for this batch: they go right after it
        batch = [item for item in taken if not item.gone]
        self.counters.expired += len(taken) - len(batch)
        if not batch:
            self._next()
            return
        try:
            self.running = self.kernel.create_task(
                self._run(batch), name=f"kerna-batched {self.spec.where}"
            )
        except KernelStopped as exc:
            self.running = None
            _fail(batch, exc, self.spec.where)
            self._forget()

    def _next(self) -> None:
        if self.items and (self.due or len(self.items) >= self.spec.max_size):
            self.flush()
        elif self.items and self.timer is None:
            self.timer = self.kernel.loop.call_later(self.spec.max_wait, self._waited)
        else:
            self._forget()

    def _forget(self) -> None:
        """Leave the kernel's table once nothing waits or runs (no garbage per agent)."""
        if not self.items and self.running is None and self.home.get(self.agent.id) is self:
            del self.home[self.agent.id]

    async def _run(self, batch: list[_Item]) -> None:
        spec = self.spec
        counters = self.counters
        counters.batches += 1
        counters.items += len(batch)
        counters.largest = max(counters.largest, len(batch))
        try:
            results = await spec.fn(self.agent, [item.message for item in batch])
        except asyncio.CancelledError:
            _fail(batch, KernelStopped(f"the kernel stopped while {spec.where} ran"), spec.where)
            raise
        except Exception as exc:
            counters.failed += 1
            _fail(batch, exc, spec.where)
            return
        finally:
            self.running = None
            self._next()
        if not isinstance(results, list | tuple) or len(results) != len(batch):
            counters.failed += 1
            got = (
                f"{len(results)} results"
                if isinstance(results, list | tuple)
                else f"a {type(results).__qualname__}"
            )
            error = ValueError(
                f"@batched {spec.where} returned {got} for a batch of {len(batch)}: it must"
                " return a list with one result (or exception) per message, in order"
            )
            _fail(batch, error, spec.where)
            return
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                _fail([item], result, spec.where)
            elif item.pending is not None and not item.pending.sent:
                item.pending.reply(result)


def _fail(batch: list[_Item], error: BaseException, where: str) -> None:
    for item in batch:
        pending = item.pending
        if pending is None:
            log.warning("@batched %s failed for a tell of %r: %r", where, item.message, error)
        elif pending.sent:
            continue
        elif isinstance(error, KernelStopped):
            pending.abandon(error)
        else:
            pending.fail(error)


def batched(
    *, max_size: int, max_wait: float
) -> Callable[[Callable[[A, list[M]], Awaitable[Sequence[R]]]], Callable[[A, M], Awaitable[R]]]:
    """Turn single asks into calls of a batch handler (it replaces ``@handler``).

    ::

        @batched(max_size=64, max_wait=0.005)
        async def infer(self, batch: list[Prompt]) -> list[Completion]: ...

    The module docstring says how batches form, how results and per-item errors map
    back, and what happens to cancelled callers and at stop.
    ``batch_stats(kernel, Model.infer)`` reads its counters.

    Args:
        max_size: a batch holds at most this many messages (and goes once it is full).
        max_wait: seconds (on the loop's clock) a batch waits for more after its first
            message; 0 sends it at the loop's next turn.

    Raises:
        TypeError: an option has the wrong type.
        ValueError: ``max_size`` is not positive, or ``max_wait`` negative or infinite.
        RegistrationError: the decorated function is not ``async``, does not take one
            batch argument annotated ``list[Message type]``, or its return annotation
            is not a list.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError(f"@batched max_size must be an int, got {max_size!r}")
    if max_size <= 0:
        raise ValueError(f"@batched max_size must be > 0, got {max_size!r}")
    if isinstance(max_wait, bool) or not isinstance(max_wait, int | float):
        raise TypeError(f"@batched max_wait must be a number of seconds, got {max_wait!r}")
    if not (max_wait >= 0 and math.isfinite(max_wait)):
        raise ValueError(f"@batched max_wait must be >= 0 and finite, got {max_wait!r}")

    def decorate(
        fn: Callable[[A, list[M]], Awaitable[Sequence[R]]],
    ) -> Callable[[A, M], Awaitable[R]]:
        spec = _Batched(fn, max_size, float(max_wait))
        where = f"@batched {spec.where}"
        if not inspect.iscoroutinefunction(fn):
            raise RegistrationError(f"{where}: a batch handler must be 'async def'")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 2:
            raise RegistrationError(f"{where}: a batch handler takes one batch argument after self")
        name = params[1].name
        annotations = dict(getattr(fn, "__annotations__", {}))
        if name not in annotations:
            raise RegistrationError(f"{where}: annotate {name!r} as list[<Message type>]")
        element = _element(annotations[name], where, name)
        reply = (
            _element(annotations["return"], where, "return") if "return" in annotations else None
        )

        @functools.wraps(fn)
        async def single(agent: A, message: M) -> Any:
            pending = agent.defer_reply() if agent.context.kind == "ask" else None
            spec.batcher(agent).add(_Item(message, pending))
            return pending

        # What registration reads (the signature and globals are fn's, via __wrapped__):
        # the element types, as if this were ``async def infer(self, batch: Prompt) ->
        # Completion``.
        single.__annotations__ = {name: element, **({"return": reply} if reply else {})}
        setattr(single, _BATCH_MARK, spec)
        return typing.cast(Callable[[A, M], Awaitable[R]], handler(single))

    return decorate


def _element(annotation: Any, where: str, what: str) -> Any:
    """The element type of a ``list[X]`` annotation (a string stays a string, resolved
    at registration like any handler's); exception alternatives of a return element
    dropped (``list[Completion | Exception]`` replies ``Completion``).

    Raises:
        RegistrationError: the annotation is not a list of something.
    """
    if isinstance(annotation, str):
        try:
            node = ast.parse(annotation, mode="eval").body
        except SyntaxError:
            node = None
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) in _SEQUENCES:
            parts = [p for p in _alternatives(node.slice) if ast.unparse(p) not in _ERRORS]
            if parts:
                return " | ".join(ast.unparse(p) for p in parts)
    elif typing.get_origin(annotation) in (list, Sequence) and typing.get_args(annotation):
        (inner,) = typing.get_args(annotation)
        if typing.get_origin(inner) in (Union, types.UnionType):
            kept = [
                arg
                for arg in typing.get_args(inner)
                if not (isinstance(arg, type) and issubclass(arg, BaseException))
            ]
            return functools.reduce(lambda a, b: a | b, kept) if kept else inner
        return inner
    raise RegistrationError(
        f"{where}: annotate {'the return' if what == 'return' else repr(what)} as"
        f" list[...] (got {annotation!r}): a batch handler takes and returns lists"
    )


_ERRORS = ("Exception", "BaseException")


def _alternatives(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return [*_alternatives(node.left), *_alternatives(node.right)]
    return [node]


def batch_stats(kernel: Kernel, handler: Callable[..., Any]) -> BatchStats:
    """The counters of a ``@batched`` handler in ``kernel`` (``Model.infer``).

    Raises:
        TypeError: ``handler`` is not decorated with ``@batched``.
    """
    spec = getattr(handler, _BATCH_MARK, None)
    if not isinstance(spec, _Batched):
        raise TypeError(f"{handler!r} is not a @batched handler")
    counters = spec.counters.get(kernel)
    if counters is None:
        return BatchStats()
    return BatchStats(
        batches=counters.batches,
        items=counters.items,
        largest=counters.largest,
        expired=counters.expired,
        failed=counters.failed,
    )
