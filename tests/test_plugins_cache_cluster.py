"""``@cached(scope="cluster")``: identical asks from different nodes compute once.

Three (or two) kernels of one cluster in this process, on a real etcd, over tcp. The
computations are held on an ``asyncio.Event`` until every caller has joined: a
middleware counts the handlings that have returned (a cached handler returns once its
ask has joined a flight, deferring its reply), so the test releases the computation
exactly when all callers, and every node's forward to the key's agent, are waiting.
The handler bodies count their calls in a class attribute shared by all the kernels.
The failover test kills a node process of its own (``tests/cache_cluster_node.py``)
while the key's agent computes there; one test adds the Redis second level.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest

from kerna import (
    Agent,
    AgentId,
    AskTimeout,
    Kernel,
    KernelStopped,
    MessageContext,
    RemoteError,
    Rendezvous,
    Request,
    handler,
)
from kerna.plugins import CacheStats, Middleware, cache_stats, cached
from kerna.plugins._cache_redis import stable_digest
from kerna.testing import EtcdMember, RedisServer, require_module

from .cache_cluster_agents import Question, Sage, Started
from .cluster import node_process, nodes

pytestmark = pytest.mark.anyio

TTL = 1.5  # the lease of the node process the failover test kills


class Answer(Request[str]):
    text: str


class Broken(Request[str]):
    text: str


class Odd(Request[str]):
    text: str


class Oracle(Agent):
    """Answers take as long as ``gate`` stays closed; every computation is recorded
    with the node it ran on and the agent key it ran on."""

    calls: ClassVar[list[tuple[str, str, str]]] = []
    gate: ClassVar[asyncio.Event] = asyncio.Event()

    @handler
    @cached(ttl=60, maxsize=100, scope="cluster")
    async def answer(self, msg: Answer) -> str:
        Oracle.calls.append((msg.text, self.kernel.node_id, self.id.key))
        await Oracle.gate.wait()
        return f"{msg.text.upper()} from {self.kernel.node_id}"

    @handler
    @cached(ttl=60, maxsize=100, scope="cluster")
    async def broken(self, msg: Broken) -> str:
        Oracle.calls.append((msg.text, self.kernel.node_id, self.id.key))
        await Oracle.gate.wait()
        raise ValueError(f"no answer to {msg.text}")

    @handler
    @cached(ttl=60, maxsize=100, scope="cluster", key=lambda msg: object())
    async def odd(self, msg: Odd) -> str:
        return "never"


class RedisClient:
    """The Redis client of the test using ``Remembered`` (its own, closed after it)."""

    current: ClassVar[Any] = None


class Remembered(Agent):
    """A cluster-wide cached answer with a Redis second level."""

    calls: ClassVar[list[str]] = []

    @handler
    @cached(
        ttl=60,
        maxsize=100,
        scope="cluster",
        redis=lambda kernel: RedisClient.current,
        redis_prefix="kerna-test-cluster:",
        redis_timeout=5,
    )
    async def answer(self, msg: Answer) -> str:
        Remembered.calls.append(msg.text)
        return msg.text.upper()


class Joined(Middleware):
    """Counts the handlings of ``Oracle`` messages that have returned (an ask to a
    cached handler returns once it has joined a flight): the callers' and the keys'
    agents' (the forwards) apart; sets ``all_in`` once ``callers`` callers have joined
    and every forward the kernels started (their ``misses``) has reached its key's
    agent."""

    def __init__(self) -> None:
        self.callers = 0
        self.keyed = 0
        self.all_in = asyncio.Event()
        self._ready: Callable[[], bool] = lambda: False

    def expect(self, callers: int, kernels: list[Kernel], fn: Callable[..., Any]) -> None:
        """``callers``: counted since this was made; without a cluster, no forwards."""
        self.all_in.clear()
        clustered = all(k.cluster is not None for k in kernels)
        self._ready = lambda: (
            self.callers == callers and (not clustered or self.keyed == totals(kernels, fn).misses)
        )

    async def handle(self, ctx: MessageContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        result = await call_next()
        assert isinstance(ctx.target, AgentId)
        if ctx.target.key.startswith("@cached:"):
            self.keyed += 1
        else:
            self.callers += 1
        if self._ready():
            self.all_in.set()
        return result


class Watcher(Agent):
    """Records the computations ``Sage`` starts, on any node (it lives on this one)."""

    started: ClassVar[list[tuple[str, str]]] = []
    changed: ClassVar[asyncio.Event] = asyncio.Event()

    @handler
    async def on_started(self, msg: Started) -> None:
        Watcher.started.append((msg.node, msg.text))
        Watcher.changed.set()


@pytest.fixture(autouse=True)
def _fresh_records() -> None:
    Oracle.calls = []
    Oracle.gate = asyncio.Event()
    Watcher.started = []
    Watcher.changed = asyncio.Event()


def homed(kernel: Kernel, kernels: list[Kernel], count: int, prefix: str = "") -> list[str]:
    """``count`` Oracle keys whose agents live on ``kernel`` (placed by rendezvous
    hashing among ``kernels``, as no claim exists yet): their handlers run there, so
    the asks are made from that node."""
    ids = sorted(k.node_id for k in kernels)
    keys = (f"{prefix}{kernel.node_id}-{i}" for i in range(10_000))
    chosen = Rendezvous().choose
    return [key for key in keys if chosen(AgentId("Oracle", key), ids) == kernel.node_id][:count]


def handler_of(message: Any) -> Callable[..., Any]:
    return Oracle.answer if isinstance(message, Answer) else Oracle.broken


def totals(kernels: list[Kernel], fn: Callable[..., Any]) -> CacheStats:
    """The field-wise sum of ``fn``'s counters over ``kernels``."""
    stats = [cache_stats(k, fn) for k in kernels]
    return CacheStats(
        **{f: sum(getattr(s, f) for s in stats) for f in CacheStats.__struct_fields__}
    )


async def ask_from_every_node(
    kernels: list[Kernel], joined: Joined, message: Any, per_node: int
) -> list[Any]:
    """``per_node`` asks of ``message`` from each node, to agents living there; releases
    the gate once all have joined (each node's callers, and each node's forward)."""
    joined.expect(len(kernels) * per_node, kernels, handler_of(message))
    asks = [
        asyncio.ensure_future(k.ref(Oracle, key).ask(message, timeout=20))
        for k in kernels
        for key in homed(k, kernels, per_node)
    ]
    async with asyncio.timeout(20):
        await joined.all_in.wait()
        assert len(Oracle.calls) <= 1  # held by the gate
        Oracle.gate.set()
        return await asyncio.gather(*asks, return_exceptions=True)


@pytest.mark.parametrize("placement", ["directory", "hash"])
async def test_identical_concurrent_asks_from_three_nodes_compute_once_on_the_keys_agent(
    etcd_server: EtcdMember, placement: str
) -> None:
    joined = Joined()
    async with nodes(etcd_server, 3, middleware=[joined]) as kernels:
        for k in kernels:
            k.register(Oracle, placement=placement)
        ids = {k.node_id for k in kernels}
        for k in kernels:
            await k.wait_members(lambda ms: {m.id for m in ms if "Oracle" in m.types} == ids, 5)
        replies = await ask_from_every_node(kernels, joined, Answer(text="q"), per_node=4)
        assert len(Oracle.calls) == 1
        ((_, computed_on, agent_key),) = Oracle.calls
        assert replies == [f"Q from {computed_on}"] * 12
        # It ran on the key's agent, wherever the cluster placed that one.
        owner = await kernels[0].ref(Oracle, agent_key).locate()
        assert owner == computed_on
        assert agent_key.startswith("@cached:")
        stats = totals(kernels, Oracle.answer)
        assert (stats.misses, stats.coalesced, stats.hits) == (3, 9, 0)  # one forward a node
        assert (stats.keyed, stats.keyed_misses, stats.in_flight) == (3, 1, 0)
        # Answered now from every node's first level, without another computation.
        async with asyncio.timeout(10):
            for k in kernels:
                assert await k.ref(Oracle, "later").ask(Answer(text="q")) == replies[0]
        assert len(Oracle.calls) == 1
        assert totals(kernels, Oracle.answer).hits == 3


async def test_an_error_reaches_every_caller_on_every_node_and_is_not_cached(
    etcd_server: EtcdMember,
) -> None:
    joined = Joined()
    async with nodes(etcd_server, 2, middleware=[joined]) as kernels:
        for k in kernels:
            k.register(Oracle)
        ids = {k.node_id for k in kernels}
        for k in kernels:
            await k.wait_members(lambda ms: {m.id for m in ms if "Oracle" in m.types} == ids, 5)
        replies = await ask_from_every_node(kernels, joined, Broken(text="q"), per_node=3)
        assert len(Oracle.calls) == 1
        for reply in replies:
            assert isinstance(reply, RemoteError)
            assert reply.type_name == "ValueError"
            assert reply.message == "no answer to q"
            assert reply.node == Oracle.calls[0][1]  # where it was raised
        assert len({id(reply) for reply in replies}) == 6
        # Not cached at either end: the next ask, from either node, computes again.
        async with asyncio.timeout(10):
            for k in kernels:
                with pytest.raises(RemoteError, match="no answer to q"):
                    await k.ref(Oracle, "again").ask(Broken(text="q"))
        assert len(Oracle.calls) == 3
        assert totals(kernels, Oracle.broken).size == 0


async def test_different_keys_compute_separately_and_each_once(
    etcd_server: EtcdMember,
) -> None:
    joined = Joined()
    async with nodes(etcd_server, 2, middleware=[joined]) as (a, b):
        for k in (a, b):
            k.register(Oracle)
        for k in (a, b):
            await k.wait_members(
                lambda ms: {m.id for m in ms if "Oracle" in m.types} == {a.node_id, b.node_id}, 5
            )
        # Two keys, asked from both nodes: two callers a key a node.
        joined.expect(8, [a, b], Oracle.answer)
        asks = {
            text: [
                asyncio.ensure_future(k.ref(Oracle, key).ask(Answer(text=text)))
                for k in (a, b)
                for key in homed(k, [a, b], 2, prefix=text)
            ]
            for text in ("x", "y")
        }
        async with asyncio.timeout(20):
            await joined.all_in.wait()
            Oracle.gate.set()
            replies = {text: await asyncio.gather(*fs) for text, fs in asks.items()}
        assert sorted(text for text, _, _ in Oracle.calls) == ["x", "y"]
        by_text = {text: (node, key) for text, node, key in Oracle.calls}
        assert by_text["x"][1] != by_text["y"][1]  # two keys' agents
        for text, got in replies.items():
            assert got == [f"{text.upper()} from {by_text[text][0]}"] * 4


async def test_first_callers_that_give_up_do_not_cancel_the_others(
    etcd_server: EtcdMember,
) -> None:
    joined = Joined()
    async with nodes(etcd_server, 2, middleware=[joined]) as (a, b):
        for k in (a, b):
            k.register(Oracle)
        for k in (a, b):
            await k.wait_members(
                lambda ms: {m.id for m in ms if "Oracle" in m.types} == {a.node_id, b.node_id}, 5
            )
        # The first caller on each node: a's times out, b's is cancelled.
        joined.expect(2, [a, b], Oracle.answer)
        (on_a,) = homed(a, [a, b], 1, prefix="first")
        (on_b,) = homed(b, [a, b], 1, prefix="first")
        timing_out = asyncio.ensure_future(a.ref(Oracle, on_a).ask(Answer(text="q"), timeout=0.5))
        cancelled = asyncio.ensure_future(b.ref(Oracle, on_b).ask(Answer(text="q"), timeout=20))
        async with asyncio.timeout(20):
            await joined.all_in.wait()
            joined.expect(4, [a, b], Oracle.answer)  # and a later caller on each node
            others = [
                asyncio.ensure_future(k.ref(Oracle, homed(k, [a, b], 1)[0]).ask(Answer(text="q")))
                for k in (a, b)
            ]
            await joined.all_in.wait()
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            with pytest.raises(AskTimeout):
                await timing_out
            assert len(Oracle.calls) == 1  # still computing, held by the gate
            Oracle.gate.set()
            replies = await asyncio.gather(*others)
        assert len(Oracle.calls) == 1
        assert replies == [f"Q from {Oracle.calls[0][1]}"] * 2
        assert totals([a, b], Oracle.answer).size == 2  # cached on both nodes


async def test_a_cluster_key_that_does_not_encode_is_a_clear_error(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 1) as (a,):
        a.register(Oracle)
        async with asyncio.timeout(10):
            with pytest.raises(RemoteError) as info:
                await a.ref(Oracle, "o").ask(Odd(text="q"))
            assert info.value.type_name == "TypeError"
            assert "the key= result of a Odd does not encode as msgpack" in info.value.message
            assert "scope='cluster'" in info.value.message
            Oracle.gate.set()  # nothing else is lost: the agent still answers
            assert await a.ref(Oracle, "o").ask(Answer(text="ok")) == f"OK from {a.node_id}"


async def test_a_local_placement_type_cannot_coalesce_across_nodes_and_says_so(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 1) as (a,):
        a.register(Oracle, placement="local")
        await a.wait_members(lambda ms: any("Oracle" in m.types for m in ms), 5)
        async with asyncio.timeout(10):
            with pytest.raises(RemoteError) as info:
                await a.ref(Oracle, "o").ask(Answer(text="q"))
        assert info.value.type_name == "kerna.ConfigError"
        assert "placement='local'" in info.value.message
        assert Oracle.calls == []


async def test_without_a_cluster_scope_cluster_coalesces_within_the_kernel_as_before() -> None:
    joined = Joined()
    async with Kernel(middleware=[joined]) as kernel:
        kernel.register(Oracle)
        joined.expect(5, [kernel], Oracle.answer)
        asks = [
            asyncio.ensure_future(kernel.ref(Oracle, f"k{i}").ask(Answer(text="q")))
            for i in range(5)
        ]
        async with asyncio.timeout(10):
            await joined.all_in.wait()
            Oracle.gate.set()
            replies = await asyncio.gather(*asks)
        assert replies == [f"Q from {kernel.node_id}"] * 5
        assert [key for _, _, key in Oracle.calls] == ["k0"]  # on the first asker's agent
        assert cache_stats(kernel, Oracle.answer) == CacheStats(
            hits=0, misses=1, coalesced=4, size=1, in_flight=0
        )


def test_a_scope_other_than_kernel_or_cluster_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="scope must be 'kernel' or 'cluster', got 'galaxy'"):
        cached(ttl=1, maxsize=1, scope="galaxy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scope must be 'kernel' or 'cluster'"):
        cached(ttl=1, maxsize=1, scope=None)  # type: ignore[arg-type]


async def test_the_keys_node_leaving_mid_computation_fails_its_waiters_and_a_survivor_computes(
    etcd_server: EtcdMember,
) -> None:
    joined = Joined()
    async with nodes(etcd_server, 2, middleware=[joined]) as (a, b):
        for k in (a, b):
            k.register(Oracle)
        for k in (a, b):
            await k.wait_members(
                lambda ms: {m.id for m in ms if "Oracle" in m.types} == {a.node_id, b.node_id}, 5
            )
        joined.expect(4, [a, b], Oracle.answer)
        asks = {
            k.node_id: [
                asyncio.ensure_future(k.ref(Oracle, key).ask(Answer(text="q"), timeout=20))
                for key in homed(k, [a, b], 2)
            ]
            for k in (a, b)
        }
        async with asyncio.timeout(20):
            await joined.all_in.wait()
            ((_, computing, _),) = Oracle.calls
            leaving, survivor = (a, b) if computing == a.node_id else (b, a)
            await leaving.stop()
            # At most once: the waiters get the error (the hand-off waited for the
            # computation until the grace ended), the computation is not re-run.
            for outcome in await asyncio.gather(*asks[survivor.node_id], return_exceptions=True):
                assert isinstance(outcome, RemoteError)
                assert outcome.type_name.endswith("KernelStopped")
                assert "node left before it replied" in outcome.message
            for outcome in await asyncio.gather(*asks[leaving.node_id], return_exceptions=True):
                assert isinstance(outcome, KernelStopped)
            assert len(Oracle.calls) == 1
            Oracle.gate.set()
            again = await survivor.ref(Oracle, "again").ask(Answer(text="q"))
        assert again == f"Q from {survivor.node_id}"  # the key's agent, placed anew
        assert [node for _, node, _ in Oracle.calls] == [leaving.node_id, survivor.node_id]


async def test_the_keys_node_killed_mid_computation_fails_every_caller_with_node_lost(
    etcd_server: EtcdMember,
) -> None:
    options = {"heartbeat": 0.5, "heartbeat_misses": 3}
    async with nodes(etcd_server, 1, ids=["s1"], transport_options=options) as (a,):
        a.register(Sage)  # its computations end here; in p1's process they never do
        a.register(Watcher)
        assert a.cluster is not None
        async with node_process(
            etcd_server, a.cluster, "p1", TTL, "tests.cache_cluster_node"
        ) as p1:
            await a.wait_members(
                lambda ms: {m.id for m in ms if "Sage" in m.types} == {"s1", "p1"}, 5
            )
            ids = ["p1", "s1"]
            home = Rendezvous().choose
            # A question whose key's agent lives on p1, asked by agents living on s1.
            text = next(
                t
                for t in (f"q{i}" for i in range(1000))
                if home(
                    AgentId(
                        "Sage", "@cached:" + stable_digest("", Question(text=t), None, False, "")
                    ),
                    ids,
                )
                == "p1"
            )
            callers = [
                k for k in (f"c{i}" for i in range(1000)) if home(AgentId("Sage", k), ids) == "s1"
            ][:3]
            asks = [
                asyncio.ensure_future(a.ref(Sage, key).ask(Question(text=text), timeout=30))
                for key in callers
            ]
            async with asyncio.timeout(10):
                await Watcher.changed.wait()
            assert Watcher.started == [("p1", text)]  # computing on p1, for good
            p1.kill()
            await p1.wait()
            async with asyncio.timeout(3):  # at once: the connection broke
                outcomes = await asyncio.gather(*asks, return_exceptions=True)
        for outcome in outcomes:
            assert isinstance(outcome, RemoteError)
            assert outcome.type_name == "kerna.NodeLost"
        stats = cache_stats(a, Sage.answer)
        assert (stats.misses, stats.coalesced, stats.size) == (1, 2, 0)  # one forward, lost
        # Not re-run for them; the next ask waits for p1's lease to expire, and the
        # key's agent, placed anew on s1, computes.
        async with asyncio.timeout(TTL + 8):
            again = await a.ref(Sage, "again").ask(Question(text=text), timeout=TTL + 6)
        assert again == f"{text} from s1"
        assert Watcher.started == [("p1", text), ("s1", text)]


async def test_with_redis_the_keys_agent_reads_and_writes_it_once_for_every_node(
    etcd_server: EtcdMember, redis_server: RedisServer
) -> None:
    aioredis = require_module("redis.asyncio", "pip install 'kerna[redis]'")
    redis = RedisClient.current = aioredis.Redis.from_url(redis_server.url)
    Remembered.calls = []
    try:
        await redis.flushdb()
        for run in range(2):  # the second cluster starts with empty first levels
            async with nodes(etcd_server, 2) as kernels:
                for k in kernels:
                    k.register(Remembered)
                ids = {k.node_id for k in kernels}
                for k in kernels:
                    await k.wait_members(
                        lambda ms, ids=ids: {m.id for m in ms if "Remembered" in m.types} == ids,
                        5,
                    )
                async with asyncio.timeout(10):
                    replies = await asyncio.gather(
                        *(
                            k.ref(Remembered, f"{k.node_id}-{i}").ask(Answer(text="q"))
                            for k in kernels
                            for i in range(3)
                        )
                    )
                assert replies == ["Q"] * 6
                assert Remembered.calls == ["q"]  # computed once, by the first cluster
                stats = totals(kernels, Remembered.answer)
                assert stats.keyed_misses == 1  # one single flight, on the key's agent
                assert (stats.l2_hits, stats.l2_errors) == (run, 0)  # the second: from Redis
                assert len(await redis.keys("kerna-test-cluster:*")) == 1
    finally:
        RedisClient.current = None
        await redis.aclose()
