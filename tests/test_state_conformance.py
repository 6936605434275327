"""One conformance suite for every state backend: memory, sqlite and etcd.

Each test works under its own key prefix, so the etcd server can be shared by the
session. A backend that cannot run here (etcd missing) skips with the reason, or fails
under KERNA_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from kerna import Compacted, Conflict, LeaseLost
from kerna.state import Compare, Delete, Get, Put, StateBackend

from .watching import collect

pytestmark = pytest.mark.anyio

_prefixes = itertools.count()


@pytest.fixture
def p() -> str:
    """A key prefix of this test's own."""
    return f"conf{next(_prefixes)}-{id(object())}/"


async def test_put_get_revisions(backend: StateBackend, p: str) -> None:
    assert await backend.get(p + "a") is None
    r1 = await backend.put(p + "a", b"1")
    kv = await backend.get(p + "a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
        p + "a",
        b"1",
        r1,
        r1,
        1,
    )
    r2 = await backend.put(p + "a", b"2")
    assert r2 > r1
    kv = await backend.get(p + "a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", r1, r2, 2)
    assert (await backend.get(p + "a", linearizable=False)) is not None


async def test_conditional_put_create_delete(backend: StateBackend, p: str) -> None:
    r1 = await backend.create(p + "k", b"v1")
    with pytest.raises(Conflict, match="exists"):
        await backend.create(p + "k", b"again")
    with pytest.raises(Conflict, match="is not at revision"):
        await backend.put(p + "k", b"v2", expected=r1 + 1000)
    r2 = await backend.put(p + "k", b"v2", expected=r1)
    with pytest.raises(Conflict):
        await backend.delete(p + "k", expected=r1)
    assert await backend.delete(p + "k", expected=r2) is True
    assert await backend.get(p + "k") is None
    assert await backend.delete(p + "k") is False
    r3 = await backend.create(p + "k", b"v3")
    kv = await backend.get(p + "k")
    assert kv is not None
    assert kv.create_revision == r3  # a re-created key starts over
    assert kv.version == 1


async def test_txn_compares_and_branches(backend: StateBackend, p: str) -> None:
    r1 = await backend.put(p + "x", b"hello")
    cases = [
        (Compare(p + "x", "value", "==", b"hello"), True),
        (Compare(p + "x", "value", "!=", b"hello"), False),
        (Compare(p + "x", "version", "==", 1), True),
        (Compare(p + "x", "version", ">", 1), False),
        (Compare(p + "x", "create", "==", r1), True),
        (Compare(p + "x", "mod", "<", r1), False),
        (Compare(p + "x", "mod", ">", r1 - 1), True),
        (Compare(p + "x", "lease", "==", 0), True),
        (Compare.absent(p + "x"), False),
        (Compare.absent(p + "missing"), True),
        (Compare.mod_is(p + "missing", 0), True),
        (Compare.created_at(p + "x", r1), True),
    ]
    for compare, expected in cases:
        result = await backend.txn([compare], [Get(p + "x")], [Get(p + "missing")])
        assert result.succeeded is expected, compare
        assert len(result.gets) == 1
        if expected:
            assert result.gets[0] is not None
            assert result.gets[0].value == b"hello"
        else:
            assert result.gets[0] is None


async def test_txn_writes_share_one_revision(backend: StateBackend, p: str) -> None:
    await backend.put(p + "gone", b"x")
    before = (await backend.range(p)).revision
    result = await backend.txn([], [Put(p + "a", b"1"), Put(p + "b", b"2"), Delete(p + "gone")])
    assert result.succeeded
    assert result.revision == before + 1
    a, b = await backend.get(p + "a"), await backend.get(p + "b")
    assert a is not None
    assert b is not None
    assert a.mod_revision == b.mod_revision == result.revision
    assert await backend.get(p + "gone") is None
    failed = await backend.txn([Compare.absent(p + "a")], [Put(p + "c", b"3")])
    assert not failed.succeeded
    assert await backend.get(p + "c") is None


async def test_range_pages_in_key_order_and_respects_the_prefix(
    backend: StateBackend, p: str
) -> None:
    keys = [f"{p}item/{i:03d}" for i in range(25)]
    for key in reversed(keys):
        await backend.put(key, key.encode())
    await backend.put(p + "item0", b"outside the item/ prefix")
    await backend.put(p + "iteM/x", b"outside too")
    page = await backend.range(p + "item/", limit=10)
    assert [kv.key for kv in page.kvs] == keys[:10]
    assert page.more
    page2 = await backend.range(p + "item/", start_after=page.kvs[-1].key, limit=10)
    assert [kv.key for kv in page2.kvs] == keys[10:20]
    page3 = await backend.range(p + "item/", start_after=page2.kvs[-1].key, limit=10)
    assert [kv.key for kv in page3.kvs] == keys[20:]
    assert not page3.more
    assert [kv.key async for kv in backend.scan(p + "item/", page_size=7)] == keys
    empty = await backend.range(p + "nothing/")
    assert empty.kvs == ()
    assert not empty.more


async def test_delete_prefix(backend: StateBackend, p: str) -> None:
    for i in range(5):
        await backend.put(f"{p}d/{i}", b"x")
    await backend.put(p + "keep", b"x")
    result = await backend.txn([], [Delete(p + "d/", prefix=True)])
    assert result.succeeded
    assert [kv.key async for kv in backend.scan(p)] == [p + "keep"]


async def test_watch_replays_history_then_follows_live(backend: StateBackend, p: str) -> None:
    r1 = await backend.put(p + "w/a", b"1")
    await backend.put(p + "other", b"not watched")
    await backend.put(p + "w/b", b"2")
    await backend.delete(p + "w/a")
    watcher = asyncio.ensure_future(collect(backend, p + "w/", r1, 5))
    await asyncio.sleep(0.05)  # let the live part of the watch attach; events race either way
    r5 = await backend.put(p + "w/c", b"3")
    await backend.put(p + "w/c", b"4")
    events = await watcher
    assert [(e.kind, e.kv.key) for e in events] == [
        ("put", p + "w/a"),
        ("put", p + "w/b"),
        ("delete", p + "w/a"),
        ("put", p + "w/c"),
        ("put", p + "w/c"),
    ]
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions)
    assert revisions[0] == r1
    assert revisions[3] == r5
    assert events[4].kv.value == b"4"
    assert events[4].kv.version == 2


async def test_two_watchers_see_the_same_stream(backend: StateBackend, p: str) -> None:
    start = (await backend.range(p)).revision + 1
    w1 = asyncio.ensure_future(collect(backend, p, start, 20))
    w2 = asyncio.ensure_future(collect(backend, p, start, 20))
    for i in range(20):
        await backend.put(f"{p}{i % 4}", str(i).encode())
    e1, e2 = await w1, await w2
    assert [(e.kv.key, e.kv.value, e.revision) for e in e1] == [
        (e.kv.key, e.kv.value, e.revision) for e in e2
    ]
    assert [e.kv.value for e in e1] == [str(i).encode() for i in range(20)]


async def test_watch_from_a_compacted_revision(backend: StateBackend, p: str) -> None:
    r1 = await backend.put(p + "c", b"1")
    await backend.put(p + "c", b"2")
    r3 = await backend.put(p + "c", b"3")
    await backend.compact(r3)
    with pytest.raises(Compacted) as info:
        await collect(backend, p, r1, 1)
    assert info.value.compact_revision >= r3 - 1
    events = await collect(backend, p, r3, 1)  # from the compaction point on is fine
    assert events[0].kv.value == b"3"
    kv = await backend.get(p + "c")
    assert kv is not None
    assert kv.value == b"3"  # compaction keeps current values


async def test_leases(backend: StateBackend, p: str) -> None:
    lease = await backend.lease_grant(30)
    assert lease > 0
    await backend.put(p + "held", b"x", lease=lease)
    kv = await backend.get(p + "held")
    assert kv is not None
    assert kv.lease == lease
    assert await backend.lease_keepalive(lease) > 0
    start = (await backend.range(p)).revision + 1
    watcher = asyncio.ensure_future(collect(backend, p, start, 1))
    await backend.lease_revoke(lease)
    assert await backend.get(p + "held") is None
    deleted = await watcher
    assert (deleted[0].kind, deleted[0].kv.key) == ("delete", p + "held")
    with pytest.raises(LeaseLost):
        await backend.lease_keepalive(lease)
    with pytest.raises(LeaseLost):
        await backend.put(p + "late", b"x", lease=lease)
    await backend.lease_revoke(lease)  # unknown ids are ignored


async def test_lease_expiry_deletes_keys_with_a_watch_event(backend: StateBackend, p: str) -> None:
    lease = await backend.lease_grant(1)
    await backend.put(p + "ttl", b"x", lease=lease)
    start = (await backend.range(p)).revision + 1
    events = await collect(backend, p, start, 1)  # nobody keeps it alive
    assert (events[0].kind, events[0].kv.key) == ("delete", p + "ttl")
    assert await backend.get(p + "ttl") is None


async def test_concurrent_compare_and_swap_has_one_winner(backend: StateBackend, p: str) -> None:
    rev = await backend.put(p + "cas", b"0")

    async def attempt(i: int) -> bool:
        try:
            await backend.put(p + "cas", str(i).encode(), expected=rev)
        except Conflict:
            return False
        return True

    wins = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert wins.count(True) == 1
    kv = await backend.get(p + "cas")
    assert kv is not None
    assert kv.value == str(wins.index(True)).encode()
