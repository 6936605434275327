"""Replicas: local mirrors of a prefix that follow the backend's watch."""

from __future__ import annotations

import asyncio
import itertools
import logging

import msgspec
import pytest

from kerna import Agent, Kernel, Message, handler
from kerna.state import Replica, connect

pytestmark = pytest.mark.anyio
_names = itertools.count()


class Count(msgspec.Struct, frozen=True):
    n: int = 0


class Set(Message):
    n: int


class Setter(Agent, state=Count):
    @handler
    async def set(self, msg: Set) -> int:
        await self.save(Count(n=msg.n))
        return self._activation.state_rev


async def test_replica_mirrors_writes_and_deletes() -> None:
    backend = await connect("memory://")
    await backend.put("p/a", b"1")
    async with Replica(backend, "p/") as replica:
        assert replica.get("p/a") == b"1"
        rev = await backend.put("p/b", b"2")
        await replica.wait_for(rev, timeout=5)
        assert replica.get("p/b") == b"2"
        rev = await backend.put("q/outside", b"x")
        await backend.delete("p/a")
        rev = await backend.put("p/c", b"3")
        await replica.wait_for(rev, timeout=5)
        assert "p/a" not in replica
        assert dict(replica.items()) == {"p/b": b"2", "p/c": b"3"}
        assert len(replica) == 2
    await backend.aclose()


async def test_replica_resyncs_after_compaction() -> None:
    backend = await connect("memory://", max_history=4)
    async with Replica(backend, "p/") as replica:
        # Writes arrive faster than the watcher runs: its resume point gets compacted.
        rev = 0
        for i in range(50):
            rev = await backend.put(f"p/{i % 5}", str(i).encode())
        await backend.delete("p/0")
        rev = await backend.put("p/9", b"last")
        await replica.wait_for(rev, timeout=5)
        assert replica.resyncs >= 1
        expected = {f"p/{k}": str(45 + k).encode() for k in range(1, 5)} | {"p/9": b"last"}
        assert dict(replica.items()) == expected
    await backend.aclose()


async def test_undecodable_values_are_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    backend = await connect("memory://")
    decoder = msgspec.msgpack.Decoder(Count)
    async with Replica(backend, "p/", decode=decoder.decode) as replica:
        await backend.put("p/bad", b"\xc1")
        rev = await backend.put("p/good", msgspec.msgpack.encode(Count(3)))
        with caplog.at_level(logging.ERROR, logger="kerna.state.replica"):
            await replica.wait_for(rev, timeout=5)
        assert replica.get("p/good") == Count(3)
        assert replica.get("p/bad") is None
        assert "'p/bad'" in caplog.text
    await backend.aclose()


async def test_a_write_in_one_kernel_shows_in_the_others_replica() -> None:
    url = f"memory://replica-{next(_names)}"
    async with Kernel(state=url) as a, Kernel(state=url) as b:
        a.register(Setter)
        b.register(Setter)
        async with b.replica(Setter) as replica:
            rev = await a.ref(Setter, "x/y").ask(Set(n=5))
            await replica.wait_for(rev, timeout=5)
            assert replica.get("x/y") == Count(5)  # the agent key, unescaped


async def test_wait_for_times_out() -> None:
    backend = await connect("memory://")
    async with Replica(backend, "p/") as replica:
        with pytest.raises(TimeoutError):
            await replica.wait_for(replica.revision + 100, timeout=0.01)
    await backend.aclose()


async def test_closing_the_backend_ends_the_replica() -> None:
    backend = await connect("memory://")
    replica = Replica(backend, "p/")
    await replica.__aenter__()
    await backend.aclose()
    task = replica._task  # noqa: SLF001 - the test inspects the replica watch task
    assert task is not None
    await asyncio.wait_for(asyncio.shield(task), 5)
    await replica.aclose()
