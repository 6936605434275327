"""``sqlite://`` specifics: durability across ``kill -9``, restarts (revisions, history;
leases end), URL/option/file errors, single-process locking, shared stores, group commit;
and a model check: random operation sequences give identical results on ``memory://``
and ``sqlite://``, across restarts of the sqlite side too.

The semantics shared by every backend are in ``test_state_conformance.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
import textwrap
import threading
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kerna import Compacted, ConfigError, DecodeError, LeaseLost
from kerna.state import Compare, Delete, Get, Put, StateBackend, WatchEvent, connect
from kerna.state._memory import MemoryBackend
from kerna.state._sqlite import SqliteBackend
from kerna.testing import watch_events


def url(path: Path) -> str:
    return f"sqlite:///{path}"  # SQLAlchemy's form: four slashes for an absolute path


# -- URLs, options, files ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("sqlite://relative.db", "has no host"),
        ("sqlite://./rel.db", "has no host"),
        ("sqlite://host/x.db", "has no host"),
        ("sqlite://user@/x.db", "has no host"),
        ("sqlite:///", "no database path"),
        ("sqlite:///tmp/x.db?max_history=3", "keyword arguments"),
    ],
)
@pytest.mark.anyio
async def test_bad_urls_name_the_url_and_the_valid_forms(bad: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        await connect(bad)
    assert repr(bad) in str(info.value)
    if "no host" in match:
        assert "sqlite:////absolute/path.db" in str(info.value)


@pytest.mark.anyio
async def test_three_slashes_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's convention: ``sqlite:///rel/state.db`` is ``./rel/state.db``."""
    (tmp_path / "rel").mkdir()
    monkeypatch.chdir(tmp_path)
    async with await connect("sqlite:///rel/state.db") as backend:
        await backend.put("k", b"here")
        assert backend.url == "sqlite:///rel/state.db"
    assert (tmp_path / "rel" / "state.db").is_file()
    monkeypatch.chdir("/")  # the same file, by its absolute path (four slashes)
    async with await connect(url(tmp_path / "rel" / "state.db")) as backend:
        kv = await backend.get("k")
        assert kv is not None
        assert kv.value == b"here"


@pytest.mark.parametrize("memory", ["sqlite://", "sqlite:///:memory:", "sqlite://:memory:"])
@pytest.mark.anyio
async def test_sqlite_urls_without_a_file_are_private_in_memory_databases(
    memory: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with await connect(memory) as a, await connect(memory) as b:
        await a.put("k", b"a's")
        assert await b.get("k") is None  # each connect is a database of its own
        assert (await a.get("k")) is not None
    # no file, here or at the root
    assert await asyncio.to_thread(lambda: os.listdir(tmp_path)) == []
    assert not await asyncio.to_thread(os.path.exists, "/:memory:")


@pytest.mark.anyio
async def test_missing_directory_and_directory_paths(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "state.db"
    with pytest.raises(ConfigError, match=str(missing.parent)):
        await connect(url(missing))
    with pytest.raises(ConfigError, match="is a directory"):
        await connect(url(tmp_path))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"bogus": 1}, "unknown sqlite:// options: bogus"),
        ({"max_history": 0}, "max_history"),
        ({"max_history": True}, "max_history"),
        ({"max_history": "10"}, "max_history"),
        ({"synchronous": "off"}, "synchronous"),
    ],
)
@pytest.mark.anyio
async def test_bad_options(tmp_path: Path, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        await connect(url(tmp_path / "s.db"), **options)


@pytest.mark.anyio
async def test_corrupt_and_foreign_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all " * 500)
    with pytest.raises(DecodeError, match=str(garbage)):
        await connect(url(garbage))

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(DecodeError, match="not a kerna state database"):
        await connect(url(foreign))

    future = tmp_path / "future.db"
    backend = await connect(url(future))
    await backend.aclose()
    conn = sqlite3.connect(future)
    with conn:
        conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    conn.close()
    with pytest.raises(DecodeError, match="schema version 99"):
        await connect(url(future))


@pytest.mark.anyio
async def test_corrupt_pages_raise_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with await connect(url(path)) as backend:
        for i in range(300):
            await backend.put(f"key/{i:04d}", bytes(range(200)))
    size = path.stat().st_size
    with path.open("r+b") as f:  # wreck the second half's pages, keep the header
        for offset in range(size // 2 // 4096 * 4096, size, 4096):
            f.seek(offset)
            f.write(b"\xa5" * 200)

    async def use() -> None:
        async with await connect(url(path)) as backend:
            await backend.range("")
            await backend.txn([], [Put("x", b"y")])

    with pytest.raises(DecodeError, match=str(path)):  # when opened, or when read
        await use()


@pytest.mark.anyio
async def test_an_empty_file_becomes_a_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    async with await connect(url(path)) as backend:
        assert await backend.put("k", b"v") == 2


@pytest.mark.anyio
async def test_a_second_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    code = textwrap.dedent(
        """
        import asyncio, sys
        from kerna.state import connect
        async def main():
            try:
                await connect(sys.argv[1])
            except Exception as exc:
                print(type(exc).__name__, exc)
        asyncio.run(main())
        """
    )
    async with await connect(url(path)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, url(path), stdout=PIPE, stderr=PIPE
        )
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert out.startswith(b"ConfigError"), out + err
    assert b"in use by another process" in out
    assert str(path).encode() in out


@pytest.mark.anyio
async def test_connections_in_one_process_share_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    b1 = await connect(url(path))
    b2 = await connect(url(path))
    with pytest.raises(ConfigError, match="already open in this process"):
        await connect(url(path), max_history=10)
    start = (await b1.range("")).revision + 1
    watch = asyncio.ensure_future(watch_events(b2, "k", start, 1))
    await asyncio.sleep(0.05)
    rev = await b1.put("k", b"v")
    assert (await watch)[0].revision == rev
    kv = await b2.get("k")
    assert kv is not None
    assert kv.value == b"v"
    await b1.aclose()
    assert await b2.put("k", b"w") == rev + 1  # still open for b2
    await b2.aclose()
    async with await connect(url(path)) as b3:  # the lock went with the last one
        kv = await b3.get("k")
        assert kv is not None
        assert kv.value == b"w"


# -- durability and restarts -------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from kerna.state import connect

    async def main():
        backend = await connect(sys.argv[1], synchronous=sys.argv[2])
        print("ready", flush=True)

        async def writer(w):
            for i in range(1_000_000):
                rev = await backend.put(f"k/{w}/{i}", f"{w}-{i}".encode())
                print(w, i, rev, flush=True)  # acknowledged

        await asyncio.gather(*(writer(w) for w in range(4)))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("synchronous", ["full", "normal"])
@pytest.mark.anyio
async def test_acknowledged_writes_survive_kill_9(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "s.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, url(path), synchronous, stdout=PIPE, stderr=PIPE
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    acked: list[tuple[str, bytes, int]] = []

    def ack(line: bytes) -> None:
        w, i, rev = line.decode().split()
        acked.append((f"k/{w}/{i}", f"{w}-{i}".encode(), int(rev)))

    try:
        async with asyncio.timeout(60):
            assert await proc.stdout.readline() == b"ready\n", await proc.stderr.read()
            while len(acked) < 400:
                line = await proc.stdout.readline()
                assert line, await proc.stderr.read()
                ack(line)
    finally:
        proc.kill()  # SIGKILL, mid-way through the writes
        rest, _ = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    for line in rest.split(b"\n")[:-1]:  # whole lines were printed: acknowledged
        ack(line)
    async with await connect(url(path)) as backend:
        for key, value, rev in acked:
            kv = await backend.get(key)
            assert kv is not None, f"acknowledged write of {key} at {rev} lost"
            assert (kv.value, kv.mod_revision) == (value, rev)
        assert (await backend.range("")).revision >= max(rev for _, _, rev in acked)
        revisions = sorted(rev for _, _, rev in acked)
        assert len(set(revisions)) == len(revisions)


@pytest.mark.anyio
async def test_restart_keeps_revisions_and_history(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with await connect(url(path)) as backend:
        r1 = await backend.put("w/a", b"1")
        r2 = await backend.put("w/b", b"2")
        await backend.put("other", b"x")
        r4 = await backend.put("w/a", b"3")
    async with await connect(url(path)) as backend:
        assert (await backend.range("")).revision == r4
        r5 = await backend.put("w/c", b"4")
        assert r5 == r4 + 1
        events = await watch_events(backend, "w/", r1, 4)
        assert [(e.kv.key, e.kv.value, e.revision) for e in events] == [
            ("w/a", b"1", r1),
            ("w/b", b"2", r2),
            ("w/a", b"3", r4),
            ("w/c", b"4", r5),
        ]
        assert events[2].kv.version == 2
        await backend.compact(r4)
    async with await connect(url(path)) as backend:
        with pytest.raises(Compacted) as info:
            await watch_events(backend, "w/", r2, 1)
        assert info.value.compact_revision == r4
        events = await watch_events(backend, "w/", r4, 2)
        assert [e.revision for e in events] == [r4, r5]


@pytest.mark.anyio
async def test_leases_end_at_a_restart(tmp_path: Path) -> None:
    """The file lock admits one process, so whoever held a lease found at open is gone:
    every lease ends there, its keys deleted with events in the history."""
    path = tmp_path / "s.db"
    async with await connect(url(path)) as backend:
        short = await backend.lease_grant(0.3)
        long = await backend.lease_grant(30)
        await backend.put("a/short", b"x", lease=short)
        await backend.put("b/long", b"y", lease=long)
        await backend.put("c/long", b"z", lease=long)
        rev = await backend.put("kept", b"k")
    async with await connect(url(path)) as backend:
        assert await backend.get("a/short") is None
        assert await backend.get("b/long") is None
        assert await backend.get("c/long") is None
        kv = await backend.get("kept")
        assert kv is not None
        assert kv.value == b"k"
        events = await watch_events(backend, "", rev + 1, 3)  # each lease at its own revision
        assert [(e.kind, e.kv.key, e.revision) for e in events] == [
            ("delete", "a/short", rev + 1),
            ("delete", "b/long", rev + 2),
            ("delete", "c/long", rev + 2),
        ]
        assert (await backend.range("")).revision == rev + 2
        for lease in (short, long):
            with pytest.raises(LeaseLost):
                await backend.lease_keepalive(lease)
        assert await backend.lease_grant(5) > long  # ids are never reused


@pytest.mark.anyio
async def test_automatic_compaction_keeps_whole_revisions() -> None:
    async with await connect("sqlite://", max_history=4) as backend:
        for i in range(10):
            await backend.put(f"k{i}", b"x")
        result = await backend.txn([], [Put(f"p/{i}", b"") for i in range(6)])
        with pytest.raises(Compacted) as info:
            await watch_events(backend, "", 1, 1)
        assert info.value.compact_revision == result.revision
        events = await watch_events(backend, "", result.revision, 6)
        assert [e.kv.key for e in events] == [f"p/{i}" for i in range(6)]


# -- concurrency, threads, closing -------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_writes_commit_in_order_and_fail_alone(tmp_path: Path) -> None:
    async with await connect(url(tmp_path / "s.db")) as backend:
        start = (await backend.range("")).revision + 1

        async def write(i: int) -> int | str:
            try:
                return await backend.put(f"k/{i:03d}", b"x", lease=10_000 if i % 10 == 3 else 0)
            except LeaseLost:
                return "lost"

        results = await asyncio.gather(*(write(i) for i in range(200)))
        revisions = [r for r in results if isinstance(r, int)]
        assert results.count("lost") == 20
        assert sorted(revisions) == list(range(start, start + 180))
        events = await watch_events(backend, "k/", start, 180)
        assert [e.revision for e in events] == sorted(revisions)
        for i, rev in enumerate(results):
            kv = await backend.get(f"k/{i:03d}")
            assert (kv.mod_revision if kv else "lost") == rev


@pytest.mark.anyio
async def test_one_thread_per_database(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    async with await connect(url(tmp_path / "s.db")) as backend:
        await asyncio.gather(*(backend.put(f"k{i}", b"x") for i in range(100)))
        await asyncio.gather(*(backend.get(f"k{i}") for i in range(100)))
        new = set(threading.enumerate()) - before
        assert [t.name for t in new] == ["kerna-sqlite:s.db"]
    for _ in range(100):  # the thread ends right after the close it acknowledged
        if not set(threading.enumerate()) - before:
            break
        await asyncio.sleep(0.01)
    assert not set(threading.enumerate()) - before


@pytest.mark.anyio
async def test_cancelled_callers_leave_the_backend_working(tmp_path: Path) -> None:
    async with await connect(url(tmp_path / "s.db")) as backend:
        tasks = [asyncio.ensure_future(backend.put(f"k{i}", b"x")) for i in range(50)]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert any(isinstance(r, asyncio.CancelledError) for r in results)
        for i, result in enumerate(results):
            if isinstance(result, int):  # not cancelled: written at that revision
                kv = await backend.get(f"k{i}")
                assert kv is not None
                assert kv.mod_revision == result
        rev = await backend.put("after", b"x")
        assert (await backend.range("")).revision == rev


@pytest.mark.anyio
async def test_aclose_ends_watches_and_is_idempotent(tmp_path: Path) -> None:
    backend = await connect(url(tmp_path / "s.db"))
    rev = await backend.put("k", b"v")
    seen: list[WatchEvent] = []

    async def watch() -> None:
        async for event in backend.watch("", rev):
            seen.append(event)

    task = asyncio.ensure_future(watch())
    await asyncio.sleep(0.05)
    await backend.aclose()
    await asyncio.wait_for(task, 5)
    assert [e.revision for e in seen] == [rev]
    await backend.aclose()
    with pytest.raises(ConfigError, match="closed"):
        await backend.get("k")
    with pytest.raises(ConfigError, match="closed"):
        await watch_events(backend, "", rev, 1)


# -- the model check: sqlite behaves as memory -------------------------------------------

_CHARS = ["a", "b", "/", "\x00", "é", "\udfff", "\U0001f600", "\uffff"]
keys = st.lists(st.sampled_from(_CHARS), max_size=3).map("".join)
values = st.binary(max_size=3)
lease_refs = st.integers(min_value=-1, max_value=3)  # -1: no lease; n: the n-th granted
numbers = st.integers(min_value=0, max_value=12)


def _compare(target: str) -> st.SearchStrategy[Compare]:
    typed, other = (values, numbers) if target == "value" else (numbers, values)
    # Mostly well-typed; sometimes not, which raises TypeError on both backends.
    return st.builds(
        Compare,
        keys,
        st.just(target),
        st.sampled_from(["==", "!=", "<", ">"]),
        st.one_of(typed, typed, typed, other),
    )


compares = st.sampled_from(["value", "version", "create", "mod", "lease"]).flatmap(_compare)
txn_ops = st.lists(
    st.one_of(
        st.builds(Put, keys, values, lease_refs.map(lambda ref: ref + 1)),
        st.builds(Delete, keys, st.booleans()),
        st.builds(Get, keys),
    ),
    max_size=3,
)
ops = st.one_of(
    st.tuples(st.just("put"), keys, values, lease_refs),
    st.tuples(st.just("txn"), st.lists(compares, max_size=2), txn_ops, txn_ops),
    st.tuples(st.just("delete"), keys, st.booleans()),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("range"), keys, st.none() | keys, st.integers(min_value=1, max_value=4)),
    st.tuples(st.just("grant")),
    st.tuples(st.just("keepalive"), lease_refs),
    st.tuples(st.just("revoke"), lease_refs),
    st.tuples(st.just("compact"), st.integers(min_value=0, max_value=6)),
    st.tuples(st.just("restart")),
)


async def _outcome(coro: Any) -> Any:
    try:
        return ("ok", await coro)
    except LeaseLost:
        # Type only: memory:// names the wrong lease when a txn mixes lease 0 and a lost one.
        return ("error", "LeaseLost")
    except (ValueError, TypeError, Compacted) as exc:
        return ("error", type(exc).__name__, str(exc), getattr(exc, "compact_revision", None))


async def _history(backend: StateBackend, prefix: str, from_revision: int) -> Any:
    """Every event from ``from_revision`` up to a final marker write."""
    out: list[tuple[str, Any]] = []
    try:
        async with asyncio.timeout(10):
            async for event in backend.watch(prefix, from_revision):
                if event.kv.key == prefix + "\U0010ffffend":
                    return out
                out.append((event.kind, event.kv))
    except Compacted as exc:
        return ("compacted", exc.compact_revision)
    raise AssertionError("watch ended")


async def _model_check(steps: list[Any], directory: str) -> None:
    path = os.path.join(directory, "model.db")
    memory = MemoryBackend()
    sqlite = await SqliteBackend.from_url(f"sqlite:///{path}", synchronous="normal")
    leases: list[int] = []

    def lease(ref: int) -> int:
        return 0 if ref < 0 else leases[ref] if ref < len(leases) else 10_000 + ref

    try:
        for step in steps:
            kind = step[0]
            if kind == "restart":
                await sqlite.aclose()
                sqlite = await SqliteBackend.from_url(f"sqlite:///{path}", synchronous="normal")
                for granted in sorted(leases):  # leases end with their process
                    await memory.lease_revoke(granted)
                continue
            results = []
            for backend in (memory, sqlite):
                if kind == "put":
                    coro: Any = backend.put(step[1], step[2], lease=lease(step[3]))
                elif kind == "txn":
                    coro = backend.txn(step[1], step[2], step[3])
                elif kind == "delete":
                    coro = backend.txn([], [Delete(step[1], step[2])])
                elif kind == "get":
                    coro = backend.get(step[1])
                elif kind == "range":
                    coro = backend.range(step[1], start_after=step[2], limit=step[3])
                elif kind == "grant":
                    coro = backend.lease_grant(1000)
                elif kind == "keepalive":
                    coro = backend.lease_keepalive(lease(step[1]))
                elif kind == "revoke":
                    coro = backend.lease_revoke(lease(step[1]))
                else:
                    current = (await backend.range("")).revision
                    coro = backend.compact(current - step[1])
                results.append(await _outcome(coro))
            assert results[0] == results[1], (step, results)
            if kind == "grant":
                leases.append(results[0][1])
        for backend in (memory, sqlite):
            marker = await backend.put("\U0010ffffend", b"")
            await backend.put("a\U0010ffffend", b"")
        for prefix in ("", "a"):
            for from_revision in sorted({1, 2, marker // 2, marker}):
                expected = await _history(memory, prefix, from_revision)
                assert await _history(sqlite, prefix, from_revision) == expected
    finally:
        await sqlite.aclose()
        await memory.aclose()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(ops, max_size=30))
def test_sqlite_behaves_like_memory(steps: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_model_check(steps, directory))
