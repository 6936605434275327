"""``@cached(redis=...)``: the second cache level, against a real redis-server.

The server is the session's (``kerna.testing``'s ``redis_server`` fixture); each
test's handlers write under a key prefix of their own. Two kernels in one process stand
for two nodes: they share nothing but the Redis.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from kerna import Agent, Kernel, Message, RemoteError, Request, handler
from kerna.plugins import cache_stats, cached
from kerna.testing import RedisServer, require_module

pytestmark = pytest.mark.anyio


class Summary(Message):
    text: str


class Summarize(Request[Summary]):
    text: str
    request_id: int = 0


class Fail(Request[Summary]):
    text: str


class Clients:
    """The Redis client each kernel uses (the test's own, closed after it)."""

    current: ClassVar[Any] = None


def client_of(kernel: Kernel) -> Any:
    return Clients.current


PREFIX = "kerna-test:"


class Summarizer(Agent):
    calls: ClassVar[list[str]] = []

    @handler
    @cached(ttl=60, maxsize=100, redis=client_of, redis_prefix=PREFIX, redis_timeout=5)
    async def summarize(self, msg: Summarize) -> Summary:
        Summarizer.calls.append(msg.text)
        await asyncio.sleep(0.01)
        return Summary(text=msg.text.upper())

    @handler
    @cached(ttl=60, maxsize=100, redis=client_of, redis_prefix=PREFIX, redis_timeout=5)
    async def fail(self, msg: Fail) -> Summary:
        Summarizer.calls.append(msg.text)
        raise ValueError(f"cannot summarize {msg.text}")


class Hasty(Agent):
    """Gives Redis 0.2 s per read or write."""

    @handler
    @cached(ttl=60, maxsize=100, redis=client_of, redis_prefix=PREFIX, redis_timeout=0.2)
    async def summarize(self, msg: Summarize) -> Summary:
        return Summary(text=msg.text)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    aioredis = require_module("redis.asyncio", "pip install 'kerna[redis]'")
    redis = aioredis.Redis.from_url(redis_server.url)
    await redis.flushdb()
    Clients.current = redis
    Summarizer.calls = []
    try:
        yield redis
    finally:
        Clients.current = None
        await redis.aclose()


async def two_kernels() -> tuple[Kernel, Kernel]:
    a, b = Kernel(ask_timeout=5.0), Kernel(ask_timeout=5.0)
    for kernel in (a, b):
        await kernel.start()
        kernel.register(Summarizer)
    return a, b


async def test_a_node_answers_from_redis_what_another_node_computed(client: Any) -> None:
    a, b = await two_kernels()
    try:
        assert await a.ref(Summarizer, "x").ask(Summarize(text="doc")) == Summary(text="DOC")
        replies = await asyncio.gather(
            *(b.ref(Summarizer, k).ask(Summarize(text="doc")) for k in "pqrs")
        )
        assert replies == [Summary(text="DOC")] * 4
        assert Summarizer.calls == ["doc"]  # b computed nothing
        stats = cache_stats(b, Summarizer.summarize)
        assert (stats.misses, stats.coalesced, stats.l2_hits, stats.l2_errors) == (1, 3, 1, 0)
        (key,) = await client.keys(f"{PREFIX}*")
        assert key.decode().startswith(f"{PREFIX}{__name__}.Summarizer.summarize:")
        assert 0 < await client.pttl(key) <= 60_000  # the same TTL, on Redis's clock
    finally:
        await a.stop()
        await b.stop()


async def test_concurrent_misses_on_one_node_compute_and_store_once(client: Any) -> None:
    a, b = await two_kernels()
    try:
        replies = await asyncio.gather(
            *(a.ref(Summarizer, k).ask(Summarize(text="doc")) for k in "pqrsp")
        )
        assert replies == [Summary(text="DOC")] * 5
        assert Summarizer.calls == ["doc"]
        assert len(await client.keys(f"{PREFIX}*")) == 1
    finally:
        await a.stop()
        await b.stop()


async def test_errors_are_cached_in_redis_neither(client: Any) -> None:
    a, b = await two_kernels()
    try:
        replies = await asyncio.gather(
            *(a.ref(Summarizer, k).ask(Fail(text="doc")) for k in "ppq"), return_exceptions=True
        )
        assert all(isinstance(r, RemoteError) and r.type_name == "ValueError" for r in replies)
        assert await client.keys(f"{PREFIX}*") == []
        with pytest.raises(RemoteError, match="cannot summarize doc"):
            await b.ref(Summarizer, "p").ask(Fail(text="doc"))
        assert Summarizer.calls == ["doc", "doc"]
    finally:
        await a.stop()
        await b.stop()


async def test_a_redis_that_fails_never_fails_an_ask(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    aioredis = require_module("redis.asyncio", "pip install 'kerna[redis]'")
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from kerna.testing import free_ports

    (port,) = free_ports(1)  # nothing listens there: refused at once (no retries)
    Clients.current = aioredis.Redis(port=port, retry=Retry(NoBackoff(), 0))
    a, b = await two_kernels()
    try:
        assert await a.ref(Summarizer, "x").ask(Summarize(text="doc")) == Summary(text="DOC")
        assert await a.ref(Summarizer, "x").ask(Summarize(text="doc")) == Summary(text="DOC")
        assert Summarizer.calls == ["doc"]  # the first level still holds it
        stats = cache_stats(a, Summarizer.summarize)
        assert (stats.hits, stats.l2_hits, stats.l2_errors) == (1, 0, 2)  # read and write
        assert "could not read Redis" in caplog.text
    finally:
        await a.stop()
        await b.stop()
        await Clients.current.aclose()


async def test_a_value_stored_by_another_schema_is_a_miss(client: Any) -> None:
    a, b = await two_kernels()
    try:
        await a.ref(Summarizer, "x").ask(Summarize(text="doc"))
        (key,) = await client.keys(f"{PREFIX}*")
        await client.set(key, b"\x93\x01\x02\x03")  # not a Summary
        assert await b.ref(Summarizer, "x").ask(Summarize(text="doc")) == Summary(text="DOC")
        assert Summarizer.calls == ["doc", "doc"]
        assert cache_stats(b, Summarizer.summarize).l2_errors == 1
    finally:
        await a.stop()
        await b.stop()


async def test_a_redis_that_does_not_answer_is_skipped_after_redis_timeout(client: Any) -> None:
    aioredis = require_module("redis.asyncio", "pip install 'kerna[redis]'")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    Clients.current = aioredis.Redis(port=silent.getsockname()[1], socket_timeout=30)
    kernel = Kernel(ask_timeout=5.0)
    await kernel.start()
    try:
        kernel.register(Hasty)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await kernel.ref(Hasty, "x").ask(Summarize(text="doc")) == Summary(text="doc")
        assert loop.time() - start < 3  # two 0.2 s bounds, not the client's 30 s
        assert cache_stats(kernel, Hasty.summarize).l2_errors == 2
    finally:
        await kernel.stop()
        await Clients.current.aclose()
        silent.close()


def test_a_bad_redis_option_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="redis= takes a redis.asyncio.Redis client"):
        cached(ttl=1, maxsize=1, redis="redis://localhost")
