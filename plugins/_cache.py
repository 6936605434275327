"""``@cached``: a response cache with single-flight for one handler.

::

    class Summarizer(Agent):
        @handler
        @cached(ttl=60, maxsize=10_000)
        async def summarize(self, msg: Summarize) -> Summary: ...

The choices, where the issue left room (and why):

- Scope: one cache per kernel and handler, shared by every activation of the agent
  type in that kernel (Orleans' and Ray's users think of a cache as belonging to the
  service, not to one grain or replica: ``Summarizer("a")`` and ``Summarizer("b")``
  asking the same question compute it once). Two kernels in one process (two nodes in
  a test) do not share: each is a node of its own; ``scope="cluster"`` makes the
  nodes of a cluster compute once between them (below).
- Key: the message type plus a 16-byte BLAKE2b digest of the message encoded with
  msgspec's msgpack encoder (equal messages encode equally; a collision needs about
  2**64 distinct messages), or the type plus what ``key=fn(message)`` returns.
- Time: the TTL runs on the event loop's clock (``loop.time()``), so a
  ``kerna.testing.VirtualClock`` moves it.
- Mailbox: the lookup happens when the handler is called; a miss starts the
  computation (the decorated function) as a task the kernel owns
  (``Kernel.create_task``), and every ask of that key, the first included, defers its
  reply (``Agent.defer_reply``) and is answered when the computation lands. So the
  agent's mailbox is free while a computation runs: an identical ask queued behind the
  first one coalesces instead of waiting for it (which would also make one error turn
  into N computations), and the agent handles its other messages meanwhile. The
  computation therefore runs beside the agent's other handlers, not one at a time with
  them: a cached handler should depend only on its message (that is what caching it
  means; it should not ``save`` state either), and what it reads of ``self.context``,
  like the context its own sends carry, is that of whatever message the agent handles
  at that moment.
- Ownership: no asker owns the computation: an asker that times out or is cancelled,
  the first one included, leaves it running for the others (its result is still
  cached). The kernel owns it: it counts as work for ``wait_idle`` and ``stop``'s grace
  period and is cancelled at stop, when its askers get ``KernelStopped``.
- Errors are delivered to every coalesced asker (each gets a ``RemoteError`` carrying
  it, as from any handler) and are not cached: the next ask computes again.
- A second level shared through Redis (``redis=client``) is read by the single flight
  before it computes and written before it answers; its semantics are in
  ``kerna.plugins._cache_redis``.
- A tell (or an event) to a cached handler waits for the computation in the handler,
  like any tell handler: its messages stay in order, and what the computation raises is
  the tell's failure (a dead letter).

Cluster-wide single flight, ``@cached(..., scope="cluster")``, in a kernel that is a
node of a cluster (without one it is ``scope="kernel"``, exactly as above):

- Where it computes: on the key's agent, an ordinary virtual agent of the handler's own
  type whose key is ``"@cached:"`` and a 32-hex-digit BLAKE2b digest of the message's
  wire tag and msgpack encoding (or of the ``key=`` result's encoding: either must then
  encode, the same on every node). A miss on any node is forwarded to that agent, and
  the cluster's placement puts it on one node (single activation: strict with
  ``placement="directory"``, the default; with ``"hash"`` a duplicate, so a second
  computation, is possible while nodes' member views differ). There the ordinary
  single flight above coalesces the forwards of every node into one computation, so the
  key's agent runs the handler itself, on its node, as an instance built like any
  other of the type (its ``factory``, its middleware, ``on_start``; idle deactivation
  collects it); a cached handler depends only on its message, so which instance runs
  it does not matter. Electing one caller to compute instead was rejected: the key's
  agent would have to watch that caller's node and hand the work on when it fails,
  which single activation already does for the agent itself. This is Orleans' way
  (one grain per key, its single activation serialising the work); its
  ``[StatelessWorker]`` grains run on the calling silo, and a type registered with
  ``placement="local"`` (kerna's equivalent) cannot coalesce across nodes: it is a
  ``ConfigError`` for the ask that would forward.
- On each node, the asks of one key coalesce first into one forward (the node's single
  flight): a kernel task owned by no asker, an ask made as a root (no asker's deadline,
  ask chain or correlation id: it serves many), bounded by ``ask_timeout`` or the first
  asker's deadline when that is longer. So each node sends one ask per key, and an
  asker that times out or is cancelled, the first one included, leaves the forward and
  the computation to the others. The answer is cached on the key's node and on every
  node whose forward it answered (each a first level of its own, each with the TTL from
  when its answer arrived); with ``redis=``, the key's agent reads and writes Redis as
  above. Errors reach every caller on every node (a ``RemoteError`` keeping the type
  name, message and node where the handler raised) and are cached nowhere.
- What "once" means: at most one computation per key at a time in the cluster while
  the key's agent has one activation, and at most once per ask: nothing is retried.
  If the key's node dies (kill -9) mid-computation, the forwards waiting on it fail
  with ``NodeLost`` within the heartbeat timeout, and every caller on every node gets
  that (a ``RemoteError`` with ``type_name`` ``"kerna.NodeLost"``); if it leaves
  gracefully, a ``RemoteError`` carrying ``KernelStopped`` the same way (the key's
  agent is handed off with its replies unsent). The computation is not re-run for
  them: it may have cost what caching saves (a model call billed), and the cluster's
  delivery is at-most-once too. The next ask computes again, on the key's agent's new
  home (new asks meanwhile wait for the lost node's lease to expire, as any message to
  its agents). A caller that wants a retry says so with a policy (``Retry`` on those
  errors, for an ``idempotent`` message).
- Counters: ``misses`` counts the forwards a node started, ``coalesced`` the asks that
  joined one, ``hits`` those its first level answered; what the key's agents on a node
  did is ``CacheStats.keyed`` (forwards answered) and ``keyed_misses`` (computations).
  A key's agent never forwards: a node whose version of the message encodes it
  differently computes it apart rather than sending it on.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import math
import weakref
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from kerna import Agent, ConfigError, KernelStopped, Message, PendingReply

from ._cache_redis import MISSING, RedisLevel, RedisOption, check_option, stable_digest

if TYPE_CHECKING:
    from cachetools import TTLCache

    from kerna import Kernel

__all__ = ["CacheStats", "cache_stats", "cached"]

A = TypeVar("A", bound=Agent)
M = TypeVar("M", bound=Message)
R = TypeVar("R")

_CACHE_MARK = "__kerna_cache__"
_KEYED = "@cached:"  # what the key of a key's agent starts with (scope="cluster")
_encode = msgspec.msgpack.Encoder().encode


class CacheStats(msgspec.Struct, frozen=True):
    """Counters of one ``@cached`` handler in one kernel (``cache_stats``).

    Every call of the handler counts once, in exactly one of:

    Attributes:
        hits: answered from the cache.
        misses: started a computation.
        coalesced: joined a computation already running for the same key.
        size: entries cached now (in this kernel's first level).
        in_flight: computations running now.

    With ``redis=`` (counted within ``misses``, not besides them):

    Attributes:
        l2_hits: computations answered from Redis, without running the handler.
        l2_errors: Redis reads and writes that failed (the ask was answered anyway).

    With ``scope="cluster"`` in a cluster, a miss is forwarded to the key's agent
    (``misses`` counts the forwards this kernel started, ``coalesced`` the asks that
    joined one, ``in_flight`` the computations and forwards running here); what the
    key's agents in this kernel do is counted apart (0 with ``scope="kernel"``):

    Attributes:
        keyed: forwards, from any node, that a key's agent here answered (from the
            cache, by joining its computation, or by computing).
        keyed_misses: of those, the ones that started a computation here.
    """

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    size: int = 0
    in_flight: int = 0
    l2_hits: int = 0
    l2_errors: int = 0
    keyed: int = 0
    keyed_misses: int = 0


class _Scope:
    """The cache, the running computations and the counters of one handler in one
    kernel."""

    __slots__ = (
        "cache",
        "coalesced",
        "flights",
        "forwards",
        "hits",
        "keyed",
        "keyed_misses",
        "l2_errors",
        "l2_hits",
        "misses",
    )

    def __init__(self, cache: TTLCache[Hashable, Any]) -> None:
        self.cache = cache
        self.flights: dict[Hashable, asyncio.Task[Any]] = {}  # computations
        self.forwards: dict[Hashable, asyncio.Task[Any]] = {}  # asks to keys' agents
        self.hits = 0
        self.misses = 0
        self.coalesced = 0
        self.l2_hits = 0
        self.l2_errors = 0
        self.keyed = 0
        self.keyed_misses = 0


class _Cached:
    """What ``@cached`` keeps for one handler (its options and per-kernel scopes)."""

    __slots__ = ("cluster", "fn", "key", "l2", "maxsize", "scopes", "ttl", "where")

    def __init__(
        self,
        fn: Callable[[Any, Any], Awaitable[Any]],
        ttl: float,
        maxsize: int,
        key: Callable[[Any], Hashable] | None,
        l2: RedisLevel | None,
        cluster: bool = False,
    ) -> None:
        self.fn = fn
        self.ttl = ttl
        self.maxsize = maxsize
        self.key = key
        self.l2 = l2
        self.cluster = cluster
        self.where = fn.__qualname__
        self.scopes: weakref.WeakKeyDictionary[Kernel, _Scope] = weakref.WeakKeyDictionary()

    def scope(self, kernel: Kernel) -> _Scope:
        scope = self.scopes.get(kernel)
        if scope is None:
            from cachetools import TTLCache

            cache: TTLCache[Hashable, Any] = TTLCache(
                self.maxsize, self.ttl, timer=kernel.loop.time
            )
            scope = self.scopes[kernel] = _Scope(cache)
        return scope

    def key_of(self, message: Any) -> Hashable:
        """The cache key of ``message``.

        Raises:
            TypeError: the message does not encode (no ``key=``), or ``key=`` returned
                something unhashable.
        """
        message_type = type(message)
        if self.key is not None:
            custom = self.key(message)
            try:
                hash(custom)
            except TypeError:
                raise TypeError(
                    f"@cached {self.where}: the key function returned an unhashable "
                    f"{type(custom).__qualname__} for a {message_type.__qualname__}"
                ) from None
            return (message_type, custom)
        try:
            data = _encode(message)
        except Exception as exc:
            raise TypeError(
                f"@cached {self.where}: a {message_type.__qualname__} cannot be a cache key:"
                f" it does not encode as msgpack ({exc}); give @cached a key= function"
            ) from exc
        return (message_type, hashlib.blake2b(data, digest_size=16).digest())

    def cluster_key(self, message: Any) -> str:
        """The key of ``message``'s agent (``scope="cluster"``), also its cache key: the
        same on every node.

        Raises:
            TypeError: the message (or the ``key=`` result) does not encode.
        """
        has_custom = self.key is not None
        custom = self.key(message) if self.key is not None else None
        return _KEYED + stable_digest(self.where, message, custom, has_custom, "scope='cluster'")

    def check_placement(self, kernel: Kernel, type_name: str) -> None:
        """Raises:
        ConfigError: ``type_name`` has ``placement="local"`` here, where the key's
            agent would be on every node (no coalescing across them).
        """
        for member in kernel.members():  # this node's record says how it registered it
            if member.id == kernel.node_id:
                if member.types.get(type_name) == "local":
                    raise ConfigError(
                        f"@cached(scope='cluster') {self.where}: agent type {type_name!r}"
                        " is registered with placement='local' (an activation per node),"
                        " so its key's agent would be on every node; register it with"
                        " placement='directory' (or 'hash'), or use scope='kernel'"
                    )
                return

    async def forward(
        self, scope: _Scope, key: str, agent: Any, message: Any, timeout: float
    ) -> Any:
        """The single flight of ``key`` on a node that is not the key's: one ask to the
        key's agent, which computes (or coalesces with the other nodes' forwards); the
        answer is cached here too before any asker gets it."""
        try:
            value = await agent.kernel.ref(agent.id.type, key).ask(message, timeout=timeout)
            scope.cache[key] = value
            return value
        finally:
            scope.forwards.pop(key, None)

    async def compute(self, scope: _Scope, key: Hashable, agent: Any, message: Any) -> Any:
        """The single flight of ``key``: Redis first (with ``redis=``), then the handler;
        the answer is cached before any asker gets it, so the next ask hits."""
        try:
            l2 = self.l2
            if l2 is None:
                value = await self.fn(agent, message)
            else:
                kernel = agent.kernel
                custom = self.key(message) if self.key is not None else None
                stored_as = l2.key(message, custom, self.key is not None)
                value = await l2.get(kernel, stored_as, scope)
                if value is MISSING:
                    value = await self.fn(agent, message)
                    await l2.put(kernel, stored_as, value, self.ttl, scope)
            scope.cache[key] = value
            return value
        finally:
            scope.flights.pop(key, None)


def cached(
    *,
    ttl: float,
    maxsize: int,
    key: Callable[[Any], Hashable] | None = None,
    redis: RedisOption = None,
    redis_prefix: str = "kerna:cache:",
    redis_timeout: float = 0.5,
    scope: Literal["kernel", "cluster"] = "kernel",
) -> Callable[[Callable[[A, M], Awaitable[R]]], Callable[[A, M], Awaitable[R]]]:
    """Cache a handler's replies by message, computing concurrent identical asks once.

    Put it under ``@handler``; the module docstring says how it interacts with the
    mailbox, who owns the computation and why the cache is per agent type::

        @handler
        @cached(ttl=60, maxsize=10_000)
        async def summarize(self, msg: Summarize) -> Summary: ...

    ``cache_stats(kernel, Summarizer.summarize)`` reads its counters.

    Args:
        ttl: seconds (on the loop's clock) an answer stays cached.
        maxsize: answers kept at most; the least recently used goes first.
        key: ``key(message) -> hashable`` instead of the encoded message (the message
            type stays part of the key), for messages that carry what must not count
            (a request id) or that do not encode.
        redis: a second level shared through Redis: a ``redis.asyncio.Redis`` client
            (yours to close, after the kernel stops), or ``lambda kernel: client``; see
            ``kerna.plugins._cache_redis`` for its semantics.
        redis_prefix: what the Redis keys start with.
        redis_timeout: seconds a Redis read or write may take before the level is
            skipped for it (the ask is answered without it).
        scope: ``"kernel"`` (the default): identical asks coalesce within one kernel.
            ``"cluster"``: in a cluster, identical asks from every node compute once,
            on the agent of this type keyed by the cache key (the module docstring's
            "Cluster-wide single flight" says how, and what "once" means when a node
            fails); without a cluster, as ``"kernel"``. The message, and the ``key=``
            result if given, must then encode as msgpack.

    Raises:
        ConfigError: cachetools is not installed (``pip install 'kerna[plugins]'``),
            or redis-py is not, with ``redis=`` (``pip install 'kerna[redis]'``).
            When called with ``scope="cluster"``: the type is registered with
            ``placement="local"`` (that ask fails with it).
        TypeError: an option has the wrong type, or the decorated function is not
            ``async``. When called: a message that does not encode (without ``key=``)
            or a key that is not hashable (or, with ``scope="cluster"``, a ``key=``
            result that does not encode) fails that ask with a ``TypeError`` naming
            the message type.
        ValueError: ``ttl`` or ``redis_timeout`` is not positive and finite,
            ``maxsize`` not positive, or ``scope`` neither ``"kernel"`` nor
            ``"cluster"``.
    """
    try:
        import cachetools  # noqa: F401 - fail here, where the decorator is written
    except ImportError as exc:
        raise ConfigError(
            f"@cached needs cachetools: pip install 'kerna[plugins]' ({exc})"
        ) from exc
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"@cached ttl must be a number of seconds, got {ttl!r}")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"@cached ttl must be > 0 and finite, got {ttl!r}")
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f"@cached maxsize must be an int, got {maxsize!r}")
    if maxsize <= 0:
        raise ValueError(f"@cached maxsize must be > 0, got {maxsize!r}")
    if redis is not None:
        check_option(redis)
        if isinstance(redis_timeout, bool) or not isinstance(redis_timeout, int | float):
            raise TypeError(f"@cached redis_timeout must be a number, got {redis_timeout!r}")
        if not (redis_timeout > 0 and math.isfinite(redis_timeout)):
            raise ValueError(f"@cached redis_timeout must be > 0, got {redis_timeout!r}")
    if key is not None and not callable(key):
        raise TypeError(f"@cached key must be a function of the message, got {key!r}")
    if not isinstance(scope, str):
        raise TypeError(f"@cached scope must be 'kernel' or 'cluster', got {scope!r}")
    if scope not in ("kernel", "cluster"):
        raise ValueError(f"@cached scope must be 'kernel' or 'cluster', got {scope!r}")

    def decorate(fn: Callable[[A, M], Awaitable[R]]) -> Callable[[A, M], Awaitable[R]]:
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"@cached {fn.__qualname__}: the handler must be 'async def'")
        l2 = None if redis is None else RedisLevel(redis, fn, redis_prefix, float(redis_timeout))
        spec = _Cached(fn, float(ttl), maxsize, key, l2, cluster=scope == "cluster")

        @functools.wraps(fn)
        async def lookup(agent: A, message: M) -> Any:
            kernel = agent.kernel
            here = spec.scope(kernel)
            if spec.cluster and kernel.cluster is not None:
                key: Hashable = spec.cluster_key(message)
                # A key's agent computes, and never forwards: a node whose version
                # of the message encodes differently computes it apart rather than
                # sending it on (the key stays the message's own, for the cache).
                keyed = agent.id.key.startswith(_KEYED)
                forwards = not keyed
                if keyed:
                    here.keyed += 1
            else:
                key = spec.key_of(message)
                keyed = forwards = False
            try:
                value = here.cache[key]
            except KeyError:
                pass
            else:
                if not keyed:
                    here.hits += 1
                return value
            flights = here.forwards if forwards else here.flights
            flight = flights.get(key)
            if flight is None:
                if forwards:
                    spec.check_placement(kernel, agent.id.type)
                    here.misses += 1
                    # Bounded like a root ask, not by the first asker's deadline: a
                    # caller that joins later may have more time left.
                    timeout = max(kernel.ask_timeout, agent.time_left() or 0.0)
                    coro = spec.forward(here, str(key), agent, message, timeout)
                    # Started in an empty context, so that the ask is a root one: no
                    # asker's deadline, ask chain or correlation id (it serves many).
                    flight = contextvars.Context().run(
                        kernel.create_task, coro, name=f"kerna-cached {spec.where} forward"
                    )
                else:
                    if keyed:
                        here.keyed_misses += 1
                    else:
                        here.misses += 1
                    flight = kernel.create_task(
                        spec.compute(here, key, agent, message), name=f"kerna-cached {spec.where}"
                    )
                flights[key] = flight
                flight.add_done_callback(_retrieve)
            elif not keyed:
                here.coalesced += 1
            if agent.context.kind != "ask":
                # A tell waits here, in order; the worker's cancellation (at stop) does
                # not cancel the shared computation: the kernel does.
                return await asyncio.shield(flight)
            pending = agent.defer_reply()
            flight.add_done_callback(functools.partial(_answer, pending))
            return pending

        setattr(lookup, _CACHE_MARK, spec)
        return lookup

    return decorate


def _retrieve(flight: asyncio.Task[Any]) -> None:
    """Read a computation's error (its askers got it): asyncio would log it as never
    retrieved when no asker waits any more."""
    if not flight.cancelled():
        flight.exception()


def _answer(pending: PendingReply, flight: asyncio.Task[Any]) -> None:
    """Send a computation's outcome to one asker."""
    if pending.sent:  # deactivation or stop already failed it
        return
    if flight.cancelled():
        pending.abandon(KernelStopped("the kernel stopped before the cached computation ended"))
        return
    error = flight.exception()
    if error is not None:
        pending.fail(error)
    else:
        pending.reply(flight.result())


def cache_stats(kernel: Kernel, handler: Callable[..., Any]) -> CacheStats:
    """The counters of a ``@cached`` handler in ``kernel`` (``Summarizer.summarize``).

    Raises:
        TypeError: ``handler`` is not decorated with ``@cached``.
    """
    spec = getattr(handler, _CACHE_MARK, None)
    if not isinstance(spec, _Cached):
        raise TypeError(f"{handler!r} is not a @cached handler")
    scope = spec.scopes.get(kernel)
    if scope is None:
        return CacheStats()
    scope.cache.expire()  # so that size counts only live answers
    return CacheStats(
        hits=scope.hits,
        misses=scope.misses,
        coalesced=scope.coalesced,
        size=len(scope.cache),
        in_flight=len(scope.flights) + len(scope.forwards),
        l2_hits=scope.l2_hits,
        l2_errors=scope.l2_errors,
        keyed=scope.keyed,
        keyed_misses=scope.keyed_misses,
    )
