"""Fault tests of the etcd backend against real etcd processes: a leader killed under
load, a member frozen under a watch, the whole store restarted under a watch, and a
compaction while a watcher is away.

Timeouts and the liveness probe are short here (``FAST``) so that each test takes a
few seconds. Measurements are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from kerna import Compacted, Conflict, OutcomeUnknown, Unavailable
from kerna.state import StateBackend, WatchEvent, connect
from kerna.state._etcd import EtcdBackend
from kerna.testing import EtcdCluster, EtcdMember

from .linearizability import Cas, History, Read, check

pytestmark = pytest.mark.anyio

FAST = {"timeout": 1.0, "probe_interval": 0.1, "probe_timeout": 0.3}


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for ``condition`` (polled); returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def eventually_async(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: str
) -> None:
    """Wait for an async ``condition`` (polled)."""
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


async def put_resolved(backend: StateBackend, key: str, value: bytes) -> tuple[int, int]:
    """Write ``value`` (a value no one else writes) and return (revision, ambiguous
    outcomes met): on ``OutcomeUnknown`` re-read to learn whether the write went through,
    and write again only if it did not."""
    ambiguous = 0
    deadline = time.monotonic() + 10
    while True:
        try:
            return await backend.put(key, value), ambiguous
        except OutcomeUnknown:
            ambiguous += 1
        except Unavailable:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no write of {key!r} went through in 10 s")
        try:
            kv = await backend.get(key)
        except Unavailable:
            continue
        if kv is not None and kv.value == value:
            return kv.mod_revision, ambiguous


class Follower:
    """Consumes a watch in a task, recording every event."""

    def __init__(self, backend: StateBackend, prefix: str, from_revision: int) -> None:
        self.events: list[WatchEvent] = []
        self._task = asyncio.ensure_future(self._run(backend.watch(prefix, from_revision)))

    async def _run(self, stream: AsyncIterator[WatchEvent]) -> None:
        async for event in stream:
            self.events.append(event)

    @property
    def revisions(self) -> list[int]:
        return [e.revision for e in self.events]

    async def wait_for(self, count: int, timeout: float = 10.0) -> float:
        return await eventually(
            lambda: len(self.events) >= count or self._task.done(),
            timeout,
            f"{count} watch events (have {len(self.events)})",
        )

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await asyncio.wait_for(self._task, 5)
        except asyncio.CancelledError:
            pass


@pytest.mark.parametrize("options", [FAST, {}], ids=["fast", "defaults"])
async def test_leader_killed_under_cas_load(
    etcd_cluster: EtcdCluster, options: dict[str, float]
) -> None:
    """kill -9 of the leader while six clients compare-and-swap: the history stays
    linearizable (no acknowledged write lost), writes resume within 5 s (with the
    default options too), and the members converge once the killed one is back."""
    async with contextlib.AsyncExitStack() as stack:
        cluster = etcd_cluster
        leader = cluster.leader()
        # Two clients start on each member: two of them lose their connection outright.
        clients: list[StateBackend] = []
        for m in cluster.members * 2:
            clients.append(await connect(cluster.url_from(m), **options))
            stack.push_async_callback(clients[-1].aclose)
        await _leader_kill(cluster, leader, clients, options)


async def _leader_kill(
    cluster: EtcdCluster,
    leader: EtcdMember,
    clients: list[StateBackend],
    options: dict[str, float],
) -> None:
    history = History()
    keys = [f"lin/{i}" for i in range(8)]
    stop = asyncio.Event()
    swaps: list[list[float]] = [[] for _ in clients]  # when each acknowledged swap returned
    acknowledged: set[bytes] = set()
    counts = {"ok": 0, "conflict": 0, "fail": 0, "ambiguous": 0}

    async def client(i: int, backend: StateBackend) -> None:
        rng = random.Random(i)
        n = 0
        while not stop.is_set():
            key = rng.choice(keys)
            read = history.invoke(i, key, Read())
            try:
                kv = await backend.get(key)
            except Unavailable:
                read.fail()
                await asyncio.sleep(0.01)
                continue
            read.ok(None if kv is None else kv.value)
            n += 1
            new = f"{i}-{n}".encode()
            op = history.invoke(i, key, Cas(None if kv is None else kv.value, new))
            try:
                await backend.put(key, new, expected=0 if kv is None else kv.mod_revision)
            except Conflict:
                op.ok(False)
                counts["conflict"] += 1
            except OutcomeUnknown:
                op.ambiguous()
                counts["ambiguous"] += 1
            except Unavailable:
                op.fail()
                counts["fail"] += 1
            else:
                op.ok(True)
                counts["ok"] += 1
                acknowledged.add(new)
                swaps[i].append(time.monotonic())
            await asyncio.sleep(0.002)

    start_revision = (await clients[0].range("lin/")).revision + 1
    workers = [asyncio.ensure_future(client(i, b)) for i, b in enumerate(clients)]
    try:
        await eventually(lambda: all(len(s) >= 20 for s in swaps), 10, "warm-up")
        killed_at = time.monotonic()
        leader.kill()

        def resumed() -> bool:
            return all(s and s[-1] > killed_at for s in swaps)

        await eventually(resumed, 5.0, "every client has a write acknowledged after the kill")
        recovery = [next(t for t in s if t > killed_at) - killed_at for s in swaps]
        await asyncio.sleep(0.5)  # some load on the new leader too
    finally:
        stop.set()
        async with asyncio.timeout(30):  # each worker finishes the request it is in
            await asyncio.gather(*workers)
    print(
        f"\nleader kill -9 ({options or 'default options'}):"
        f" writes resumed after {max(recovery):.2f} s"
        f" (per client: {', '.join(f'{r:.2f}' for r in recovery)}); ops: {counts}"
    )
    assert max(recovery) < 5.0

    # The killed member comes back and catches up: every member holds the same data.
    leader.start()
    await asyncio.to_thread(leader.wait_ready)
    final = await clients[1].range("lin/")
    for key in keys:  # final reads join the history
        read = history.invoke("final", key, Read())
        kv = await clients[1].get(key)
        read.ok(None if kv is None else kv.value)
    snapshots = []
    for member in cluster.members:
        solo = await connect(member.url, **FAST)
        try:

            async def caught_up(solo: StateBackend = solo) -> bool:
                return (await solo.range("lin/")).revision >= final.revision

            await eventually_async(caught_up, 10, f"{member.name} catches up")
            page = await solo.range("lin/")
            snapshots.append([(kv.key, kv.value, kv.mod_revision) for kv in page.kvs])
            assert (await solo.get(keys[0], linearizable=False)) == await solo.get(keys[0])
        finally:
            await solo.aclose()
    assert snapshots[0] == snapshots[1] == snapshots[2]

    # No acknowledged write is lost: each is in the store's history of changes...
    written: set[bytes] = set()
    async with asyncio.timeout(10):
        async for event in clients[1].watch("lin/", start_revision):
            written.add(event.kv.value)
            if event.revision >= final.revision:
                break
    assert acknowledged <= written
    # ...and the whole history is linearizable.
    started = time.monotonic()
    result = check(history, timeout=30)
    print(f"linearizability: {result.outcome} for {len(history)} ops"
          f" in {time.monotonic() - started:.2f} s")  # fmt: skip
    assert result.ok, result.explanation


async def test_watch_moves_off_a_frozen_member(etcd_cluster: EtcdCluster) -> None:
    """SIGSTOP the member a watch streams from: the probe notices, the watch resumes on
    another member, and it sees every revision exactly once."""
    cluster = etcd_cluster
    leader = cluster.leader()
    frozen = next(m for m in cluster.members if m is not leader)
    watcher = await connect(cluster.url_from(frozen), **FAST)
    writer = await connect(cluster.url_from(leader), **FAST)
    assert isinstance(watcher, EtcdBackend)
    revisions: list[int] = []
    start = (await writer.range("frozen/")).revision + 1
    follower = Follower(watcher, "frozen/", start)
    try:
        for i in range(10):
            revisions.append(await writer.put(f"frozen/{i % 3}", str(i).encode()))
        await follower.wait_for(10)
        assert watcher.endpoint == frozen.endpoint
        frozen.pause()
        stopped_at = time.monotonic()
        try:
            for i in range(10, 30):
                revisions.append(await writer.put(f"frozen/{i % 3}", str(i).encode()))
            took = await follower.wait_for(30)
            moved = time.monotonic() - stopped_at
            assert watcher.endpoint != frozen.endpoint
        finally:
            frozen.resume()
        for i in range(30, 40):
            revisions.append(await writer.put(f"frozen/{i % 3}", str(i).encode()))
        await follower.wait_for(40)
        print(f"\nSIGSTOP of the watched member: all events delivered {moved:.2f} s after the"
              f" stop ({took:.2f} s after the last write)")  # fmt: skip
        assert follower.revisions == revisions
        assert [e.kv.value for e in follower.events] == [str(i).encode() for i in range(40)]
    finally:
        await follower.stop()
        await watcher.aclose()
        await writer.aclose()


async def test_whole_store_restarted_under_a_watch(etcd_server: EtcdMember) -> None:
    """kill -9 and restart the only member while a watch is open: writes fail closed
    while it is down, then writes and the watch resume, nothing lost or repeated."""
    server = etcd_server
    watcher = await connect(server.url, **FAST)
    writer = await connect(server.url, **FAST)
    revisions: list[int] = []
    ambiguous = 0
    start = (await writer.range("restart/")).revision + 1
    follower = Follower(watcher, "restart/", start)
    try:
        for i in range(10):
            rev, _ = await put_resolved(writer, f"restart/{i % 3}", str(i).encode())
            revisions.append(rev)
        await follower.wait_for(10)
        server.kill()
        began = time.monotonic()
        with pytest.raises(Unavailable, match=server.endpoint):
            await writer.put("restart/down", b"x")
        assert time.monotonic() - began < 2 * FAST["timeout"]
        server.start()
        await asyncio.to_thread(server.wait_ready)  # the watch retries meanwhile
        downtime = time.monotonic() - began
        for i in range(10, 20):
            rev, amb = await put_resolved(writer, f"restart/{i % 3}", str(i).encode())
            revisions.append(rev)
            ambiguous += amb
        took = await follower.wait_for(20)
        print(f"\nrestart: down {downtime:.2f} s; watch caught up {took:.2f} s after the last"
              f" write; ambiguous writes met: {ambiguous}")  # fmt: skip
        assert follower.revisions == revisions
        assert [e.kv.value for e in follower.events] == [str(i).encode() for i in range(20)]
    finally:
        await follower.stop()
        await watcher.aclose()
        await writer.aclose()
        server.ensure_running()


async def test_compaction_while_a_watcher_is_away(etcd_cluster: EtcdCluster) -> None:
    """A watcher stops reading, its member freezes and the history it needs is compacted
    meanwhile: resuming raises Compacted with the compaction revision, and a resync
    (range, then watch from the range's revision) carries on."""
    cluster = etcd_cluster
    leader = cluster.leader()
    frozen = next(m for m in cluster.members if m is not leader)
    watcher = await connect(cluster.url_from(frozen), **FAST)
    writer = await connect(cluster.url_from(leader), **FAST)
    assert isinstance(watcher, EtcdBackend)
    try:
        start = (await writer.range("away/")).revision + 1
        stream = watcher.watch("away/", start).__aiter__()
        first = [await writer.put(f"away/{i}", b"1") for i in range(5)]
        async with asyncio.timeout(5):
            seen = [(await anext(stream)).revision for _ in first]  # then it stops reading
        assert seen == first
        frozen.pause()
        try:
            await eventually(lambda: watcher.endpoint != frozen.endpoint, 5, "probe drops it")
            later = [await writer.put(f"away/{i}", b"2") for i in range(5)]
            await writer.compact(later[-1])
        finally:
            frozen.resume()
        with pytest.raises(Compacted) as info:
            async with asyncio.timeout(5):
                await anext(stream)
        assert info.value.compact_revision == later[-1]
        # The resync a replica does: a full read, then a watch from after it.
        page = await watcher.range("away/")
        assert [kv.value for kv in page.kvs] == [b"2"] * 5
        follower = Follower(watcher, "away/", page.revision + 1)
        rev = await writer.put("away/0", b"3")
        await follower.wait_for(1)
        assert follower.revisions == [rev]
        await follower.stop()
    finally:
        await watcher.aclose()
        await writer.aclose()
