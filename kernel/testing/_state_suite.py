"""The conformance suite every ``StateBackend`` passes (``kerna.testing.StateBackendSuite``).

kerna runs it against ``memory://``, ``sqlite://`` and etcd (tests/test_state_conformance.py);
a third-party backend runs the same tests by subclassing it (see the class docstring).
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from kerna._errors import Compacted, Conflict, LeaseLost
from kerna.state import Compare, Delete, Get, Put, StateBackend

from ._watch import watch_events

__all__ = ["StateBackendSuite"]

_prefixes = itertools.count()


@pytest.mark.anyio
class StateBackendSuite:
    """The tests every state backend passes; subclass it to run them on yours.

    A subclass named ``Test...`` gives it a ``backend`` fixture that yields a connected
    store (it may be shared: each test works under a key prefix of its own, so one
    server can serve a whole session)::

        import pytest
        from kerna.state import connect
        from kerna.testing import StateBackendSuite

        class TestMyBackend(StateBackendSuite):
            @pytest.fixture
            async def backend(self):
                b = await connect("mystore://127.0.0.1:7000")
                yield b
                await b.aclose()

    The tests are async: they run through anyio's pytest plugin (installed with anyio,
    a dependency of kerna) on asyncio, anyio's default ``anyio_backend``, and need
    pytest (``pip install 'kerna[test]'``). Every wait in them is bounded. Two take
    about a second each: lease expiry runs in real time. One compacts the store's
    history at its current revision.
    """

    @pytest.fixture
    def prefix(self) -> str:
        """A key prefix of this test's own."""
        return f"kerna-conformance/{next(_prefixes)}-{id(object())}/"

    async def test_put_get_revisions(self, backend: StateBackend, prefix: str) -> None:
        assert await backend.get(prefix + "a") is None
        r1 = await backend.put(prefix + "a", b"1")
        kv = await backend.get(prefix + "a")
        assert kv is not None
        assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
            prefix + "a",
            b"1",
            r1,
            r1,
            1,
        )
        r2 = await backend.put(prefix + "a", b"2")
        assert r2 > r1
        kv = await backend.get(prefix + "a")
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", r1, r2, 2)
        assert (await backend.get(prefix + "a", linearizable=False)) is not None

    async def test_conditional_put_create_delete(self, backend: StateBackend, prefix: str) -> None:
        r1 = await backend.create(prefix + "k", b"v1")
        with pytest.raises(Conflict, match="exists"):
            await backend.create(prefix + "k", b"again")
        with pytest.raises(Conflict, match="is not at revision"):
            await backend.put(prefix + "k", b"v2", expected=r1 + 1000)
        r2 = await backend.put(prefix + "k", b"v2", expected=r1)
        with pytest.raises(Conflict):
            await backend.delete(prefix + "k", expected=r1)
        assert await backend.delete(prefix + "k", expected=r2) is True
        assert await backend.get(prefix + "k") is None
        assert await backend.delete(prefix + "k") is False
        r3 = await backend.create(prefix + "k", b"v3")
        kv = await backend.get(prefix + "k")
        assert kv is not None
        assert kv.create_revision == r3  # a re-created key starts over
        assert kv.version == 1

    async def test_txn_compares_and_branches(self, backend: StateBackend, prefix: str) -> None:
        r1 = await backend.put(prefix + "x", b"hello")
        cases = [
            (Compare(prefix + "x", "value", "==", b"hello"), True),
            (Compare(prefix + "x", "value", "!=", b"hello"), False),
            (Compare(prefix + "x", "version", "==", 1), True),
            (Compare(prefix + "x", "version", ">", 1), False),
            (Compare(prefix + "x", "create", "==", r1), True),
            (Compare(prefix + "x", "mod", "<", r1), False),
            (Compare(prefix + "x", "mod", ">", r1 - 1), True),
            (Compare(prefix + "x", "lease", "==", 0), True),
            (Compare.absent(prefix + "x"), False),
            (Compare.absent(prefix + "missing"), True),
            (Compare.mod_is(prefix + "missing", 0), True),
            (Compare.created_at(prefix + "x", r1), True),
        ]
        for compare, expected in cases:
            result = await backend.txn([compare], [Get(prefix + "x")], [Get(prefix + "missing")])
            assert result.succeeded is expected, compare
            assert len(result.gets) == 1
            if expected:
                assert result.gets[0] is not None
                assert result.gets[0].value == b"hello"
            else:
                assert result.gets[0] is None

    async def test_txn_branches_read_other_keys_alongside_their_writes(
        self, backend: StateBackend, prefix: str
    ) -> None:
        # A claim and the state it guards, in one round trip (kerna's activation).
        claim, state = prefix + "claim", prefix + "state"
        stored = await backend.put(state, b"s1")
        lease = await backend.lease_grant(30)
        try:
            won = await backend.txn(
                [Compare.absent(claim)],
                [Put(claim, b"me", lease), Get(state)],
                [Get(claim), Get(state)],
            )
            assert won.succeeded
            assert won.revision > stored
            assert len(won.gets) == 1
            assert won.gets[0] is not None
            assert (won.gets[0].value, won.gets[0].mod_revision) == (b"s1", stored)
            lost = await backend.txn(
                [Compare.absent(claim)],
                [Put(claim, b"other", lease), Get(state)],
                [Get(claim), Get(state)],
            )
            assert not lost.succeeded
            assert len(lost.gets) == 2
            held, read = lost.gets
            assert held is not None
            assert (held.value, held.create_revision, held.lease) == (b"me", won.revision, lease)
            assert read is not None
            assert read.value == b"s1"
            absent = await backend.txn(
                [Compare.absent(prefix + "claim2")],
                [Put(prefix + "claim2", b"me", lease), Get(prefix + "no-state")],
            )
            assert absent.succeeded
            assert absent.gets == (None,)
        finally:
            await backend.lease_revoke(lease)

    async def test_txn_writes_share_one_revision(self, backend: StateBackend, prefix: str) -> None:
        await backend.put(prefix + "gone", b"x")
        before = (await backend.range(prefix)).revision
        result = await backend.txn(
            [], [Put(prefix + "a", b"1"), Put(prefix + "b", b"2"), Delete(prefix + "gone")]
        )
        assert result.succeeded
        assert result.revision == before + 1
        a, b = await backend.get(prefix + "a"), await backend.get(prefix + "b")
        assert a is not None
        assert b is not None
        assert a.mod_revision == b.mod_revision == result.revision
        assert await backend.get(prefix + "gone") is None
        failed = await backend.txn([Compare.absent(prefix + "a")], [Put(prefix + "c", b"3")])
        assert not failed.succeeded
        assert await backend.get(prefix + "c") is None

    async def test_range_pages_in_key_order_and_respects_the_prefix(
        self, backend: StateBackend, prefix: str
    ) -> None:
        keys = [f"{prefix}item/{i:03d}" for i in range(25)]
        for key in reversed(keys):
            await backend.put(key, key.encode())
        await backend.put(prefix + "item0", b"outside the item/ prefix")
        await backend.put(prefix + "iteM/x", b"outside too")
        page = await backend.range(prefix + "item/", limit=10)
        assert [kv.key for kv in page.kvs] == keys[:10]
        assert page.more
        page2 = await backend.range(prefix + "item/", start_after=page.kvs[-1].key, limit=10)
        assert [kv.key for kv in page2.kvs] == keys[10:20]
        page3 = await backend.range(prefix + "item/", start_after=page2.kvs[-1].key, limit=10)
        assert [kv.key for kv in page3.kvs] == keys[20:]
        assert not page3.more
        assert [kv.key async for kv in backend.scan(prefix + "item/", page_size=7)] == keys
        empty = await backend.range(prefix + "nothing/")
        assert empty.kvs == ()
        assert not empty.more

    async def test_range_stops_before_the_end_key(self, backend: StateBackend, prefix: str) -> None:
        keys = [f"{prefix}e/{i:03d}" for i in range(20)]
        for key in keys:
            await backend.put(key, b"x")
        last = await backend.put(prefix + "e0", b"outside the e/ prefix, before 'z'")
        page = await backend.range(prefix + "e/", end=keys[10])
        assert ([kv.key for kv in page.kvs], page.more) == (keys[:10], False)
        assert page.revision >= last
        page = await backend.range(prefix + "e/", end=keys[10], limit=4)
        assert ([kv.key for kv in page.kvs], page.more) == (keys[:4], True)
        page = await backend.range(prefix + "e/", start_after=keys[3], end=keys[10], limit=4)
        assert ([kv.key for kv in page.kvs], page.more) == (keys[4:8], True)
        page = await backend.range(prefix + "e/", start_after=keys[7], end=keys[10], limit=4)
        assert ([kv.key for kv in page.kvs], page.more) == (keys[8:10], False)
        between = await backend.range(prefix + "e/", end=keys[10] + "5")  # not a stored key
        assert [kv.key for kv in between.kvs] == keys[:11]
        past = await backend.range(prefix + "e/", end=prefix + "z")  # the prefix still bounds
        assert ([kv.key for kv in past.kvs], past.more) == (keys, False)
        everything = await backend.range("", start_after=prefix + "e/", end=keys[3])
        assert [kv.key for kv in everything.kvs] == keys[:3]  # no prefix: only the end bounds
        for start_after, end in [
            (None, prefix + "e/"),  # the end is the prefix itself
            (None, prefix + "a"),  # the end comes before the prefix
            (keys[5], keys[5]),  # the end is the start
            (keys[5], keys[2]),  # the end comes before the start
            (None, ""),
        ]:
            empty = await backend.range(prefix + "e/", start_after=start_after, end=end)
            assert (empty.kvs, empty.more) == ((), False), (start_after, end)
            assert empty.revision >= last  # the store's revision, as for any range

    async def test_delete_prefix(self, backend: StateBackend, prefix: str) -> None:
        for i in range(5):
            await backend.put(f"{prefix}d/{i}", b"x")
        await backend.put(prefix + "keep", b"x")
        result = await backend.txn([], [Delete(prefix + "d/", prefix=True)])
        assert result.succeeded
        assert [kv.key async for kv in backend.scan(prefix)] == [prefix + "keep"]

    async def test_watch_replays_history_then_follows_live(
        self, backend: StateBackend, prefix: str
    ) -> None:
        r1 = await backend.put(prefix + "w/a", b"1")
        await backend.put(prefix + "other", b"not watched")
        await backend.put(prefix + "w/b", b"2")
        await backend.delete(prefix + "w/a")
        watcher = asyncio.ensure_future(watch_events(backend, prefix + "w/", r1, 5))
        await asyncio.sleep(0.05)  # let the live part of the watch attach; events race either way
        r5 = await backend.put(prefix + "w/c", b"3")
        await backend.put(prefix + "w/c", b"4")
        events = await watcher
        assert [(e.kind, e.kv.key) for e in events] == [
            ("put", prefix + "w/a"),
            ("put", prefix + "w/b"),
            ("delete", prefix + "w/a"),
            ("put", prefix + "w/c"),
            ("put", prefix + "w/c"),
        ]
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions)
        assert revisions[0] == r1
        assert revisions[3] == r5
        assert events[4].kv.value == b"4"
        assert events[4].kv.version == 2

    async def test_two_watchers_see_the_same_stream(
        self, backend: StateBackend, prefix: str
    ) -> None:
        start = (await backend.range(prefix)).revision + 1
        w1 = asyncio.ensure_future(watch_events(backend, prefix, start, 20))
        w2 = asyncio.ensure_future(watch_events(backend, prefix, start, 20))
        for i in range(20):
            await backend.put(f"{prefix}{i % 4}", str(i).encode())
        e1, e2 = await w1, await w2
        assert [(e.kv.key, e.kv.value, e.revision) for e in e1] == [
            (e.kv.key, e.kv.value, e.revision) for e in e2
        ]
        assert [e.kv.value for e in e1] == [str(i).encode() for i in range(20)]

    async def test_watch_from_a_compacted_revision(
        self, backend: StateBackend, prefix: str
    ) -> None:
        r1 = await backend.put(prefix + "c", b"1")
        await backend.put(prefix + "c", b"2")
        r3 = await backend.put(prefix + "c", b"3")
        await backend.compact(r3)
        with pytest.raises(Compacted) as info:
            await watch_events(backend, prefix, r1, 1)
        assert info.value.compact_revision >= r3 - 1
        events = await watch_events(backend, prefix, r3, 1)  # from the compaction point on is fine
        assert events[0].kv.value == b"3"
        kv = await backend.get(prefix + "c")
        assert kv is not None
        assert kv.value == b"3"  # compaction keeps current values

    async def test_leases(self, backend: StateBackend, prefix: str) -> None:
        lease = await backend.lease_grant(30)
        assert lease > 0
        await backend.put(prefix + "held", b"x", lease=lease)
        kv = await backend.get(prefix + "held")
        assert kv is not None
        assert kv.lease == lease
        assert await backend.lease_keepalive(lease) > 0
        start = (await backend.range(prefix)).revision + 1
        watcher = asyncio.ensure_future(watch_events(backend, prefix, start, 1))
        await backend.lease_revoke(lease)
        assert await backend.get(prefix + "held") is None
        deleted = await watcher
        assert (deleted[0].kind, deleted[0].kv.key) == ("delete", prefix + "held")
        with pytest.raises(LeaseLost):
            await backend.lease_keepalive(lease)
        with pytest.raises(LeaseLost):
            await backend.put(prefix + "late", b"x", lease=lease)
        await backend.lease_revoke(lease)  # unknown ids are ignored

    async def test_lease_expiry_deletes_keys_with_a_watch_event(
        self, backend: StateBackend, prefix: str
    ) -> None:
        lease = await backend.lease_grant(1)
        await backend.put(prefix + "ttl", b"x", lease=lease)
        start = (await backend.range(prefix)).revision + 1
        events = await watch_events(backend, prefix, start, 1)  # nobody keeps it alive
        assert (events[0].kind, events[0].kv.key) == ("delete", prefix + "ttl")
        assert await backend.get(prefix + "ttl") is None

    async def test_concurrent_compare_and_swap_has_one_winner(
        self, backend: StateBackend, prefix: str
    ) -> None:
        rev = await backend.put(prefix + "cas", b"0")

        async def attempt(i: int) -> bool:
            try:
                await backend.put(prefix + "cas", str(i).encode(), expected=rev)
            except Conflict:
                return False
            return True

        wins = await asyncio.gather(*(attempt(i) for i in range(20)))
        assert wins.count(True) == 1
        kv = await backend.get(prefix + "cas")
        assert kv is not None
        assert kv.value == str(wins.index(True)).encode()
