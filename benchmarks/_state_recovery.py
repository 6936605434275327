"""Recovery: activating an event-sourced agent whose log holds 100,000 events.

The logs are built once per backend with ``kerna.state.EventLog.append`` (100 events per
append, each append one transaction), for two agent types: ``Ledger`` (a snapshot every
1,000 events) and ``LedgerNoSnapshots`` (never). Timed per run: the first ask to the
agent in a freshly started ``Kernel`` (its start, i.e. connecting, is not timed), which
takes the lease and the claim, reads the snapshot and replays the events after it, 1,000
per page.

The floor reads the same log prefix in the same pages (1,000 keys) with the backend's
raw client and msgspec-decodes every value into the same record struct (typed event),
without applying anything: etcd through aetcd's ``KVStub`` (channel connected before
the clock starts), sqlite through a plain ``sqlite3`` connection (``SELECT key, value``
by key range), memory as 1,000-value slices of a sorted in-memory list of the same keys
and values (bisect to the snapshot; the least any in-process store could do). With snapshots the
floor first gets and decodes the snapshot, then reads what follows it.
"""

from __future__ import annotations

import bisect
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
from aetcd import rpc

from kerna import Agent, Kernel
from kerna.state import EventLog, EventSourcing, Layout, StateBackend, connect

from ._common import run_async
from ._state_etcd import CALL_TIMEOUT, METADATA, RawEtcd, prefix_end
from ._state_models import Balance, Deposited, GetBalance, Ledger, Record

__all__ = ["PAGE", "build_log", "floor_etcd", "floor_memory", "floor_sqlite", "kerna_activation"]

PAGE = 1000
BATCH = 100
KEY = "acct-1"
LAYOUT = Layout()  # kerna's default state_prefix "kerna/"
ACTIVATION_TIMEOUT = 300.0


class _Snapshot(msgspec.Struct, frozen=True):
    seq: int
    state: Balance


def _sourcing(agent: type[Agent]) -> EventSourcing[Balance]:
    return EventSourcing(
        Balance,
        agent.apply,  # type: ignore[attr-defined]
        snapshot_every=agent.__kerna_snapshot_every__,
    )


async def build_log(backend: StateBackend, agent: type[Agent], events: int) -> int:
    """Append ``events`` more events to ``agent``'s log under ``KEY`` (``BATCH`` per
    append); returns the last sequence number."""
    log = EventLog(backend, _sourcing(agent), agent.__name__, KEY, layout=LAYOUT)
    state, seq = await log.load()
    end = seq + events
    while seq < end:
        batch = [Deposited(amount=1 + (seq + i) % 7) for i in range(min(BATCH, end - seq))]
        for event in batch:
            state = Ledger.apply(state, event)
        seq = await log.append(batch, expected_seq=seq, state_after=state)
    return seq


def kerna_activation(url: str, agent: type[Agent], expected_ops: int) -> float:
    """Seconds of the first ask to the agent in a fresh kernel."""

    async def main() -> float:
        async with Kernel(state=url) as kernel:
            kernel.register(agent)
            ref = kernel.ref(agent, KEY)
            t0 = time.perf_counter()
            balance = await ref.ask(GetBalance(), timeout=ACTIVATION_TIMEOUT)
            elapsed = time.perf_counter() - t0
        if balance.ops != expected_ops:
            raise RuntimeError(
                f"{agent.__name__} recovered {balance.ops} events, not {expected_ops}"
            )
        return elapsed

    return run_async(main, "asyncio")


def _check(decoded: int, expected: int, where: str) -> None:
    if decoded != expected:
        raise RuntimeError(f"{where} floor decoded {decoded} records, expected {expected}")


# -- etcd ----------------------------------------------------------------------------------


def floor_etcd(
    endpoint: str, agent: type[Agent], snapshot: bool, expected_ops: int, *, bounded: bool = False
) -> float:
    """Prefix range pages of ``limit=1000`` (kerna's replay before bounded pages), or with
    ``bounded`` pages whose ``range_end`` is the key 1,000 sequence numbers on (etcd
    3.4 then stops scanning at the page's end instead of counting every key left)."""

    async def main() -> float:
        etcd = RawEtcd(endpoint)
        decode_record = msgspec.msgpack.Decoder(Record).decode
        decode_snapshot = msgspec.msgpack.Decoder(_Snapshot).decode
        name = agent.__name__
        prefix = LAYOUT.log_prefix(name, KEY).encode()
        end = prefix_end(prefix)
        try:
            await etcd.channel.channel_ready()
            t0 = time.perf_counter()
            start, seq, decoded = prefix, 0, 0
            if snapshot:
                key = LAYOUT.state(name, KEY).encode()
                got: Any = await etcd.kv.Range(
                    rpc.RangeRequest(key=key), timeout=CALL_TIMEOUT, metadata=METADATA
                )
                if got.kvs:
                    seq = decode_snapshot(got.kvs[0].value).seq
                    start = LAYOUT.log(name, KEY, seq).encode() + b"\0"
            last = seq
            while True:
                page_end = LAYOUT.log(name, KEY, last + PAGE + 1).encode() if bounded else end
                request = rpc.RangeRequest(key=start, range_end=page_end, limit=PAGE)
                page: Any = await etcd.kv.Range(request, timeout=CALL_TIMEOUT, metadata=METADATA)
                for kv in page.kvs:
                    last = decode_record(kv.value).seq
                decoded += len(page.kvs)
                if not page.kvs or (not bounded and not page.more):
                    break
                start = page.kvs[-1].key + b"\0"
            elapsed = time.perf_counter() - t0
        finally:
            await etcd.close()
        _check(seq + decoded, expected_ops, "etcd")
        return elapsed

    return run_async(main, "asyncio")


# -- sqlite --------------------------------------------------------------------------------


def floor_sqlite(
    path: Path, agent: type[Agent], snapshot: bool, expected_ops: int, *, kerna_where: bool = False
) -> float:
    """Pages of ``WHERE key > ? AND key < ?`` (lower bound: the last key read), or with
    ``kerna_where`` both lower bounds (``key >= prefix AND key < end AND key > last``,
    kerna's sqlite backend up to da51abb): SQLite then seeks to the prefix and scans
    every earlier key of the log again on each page."""
    decode_record = msgspec.msgpack.Decoder(Record).decode
    decode_snapshot = msgspec.msgpack.Decoder(_Snapshot).decode
    prefix = LAYOUT.log_prefix(agent.__name__, KEY).encode()
    end = prefix_end(prefix)
    if kerna_where:
        sql = (
            "SELECT key, value FROM kv WHERE key >= ? AND key < ? AND key > ? ORDER BY key LIMIT ?"
        )
    else:
        sql = "SELECT key, value FROM kv WHERE key > ? AND key < ? ORDER BY key LIMIT ?"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("SELECT 1 FROM kv LIMIT 1").fetchall()  # open and read the schema
        t0 = time.perf_counter()
        after, seq, decoded = prefix, 0, 0
        if snapshot:
            key = LAYOUT.state(agent.__name__, KEY).encode()
            row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            if row is not None:
                seq = decode_snapshot(row[0]).seq
                after = LAYOUT.log(agent.__name__, KEY, seq).encode()
        while True:
            bounds = (prefix, end, after) if kerna_where else (after, end)
            rows = db.execute(sql, (*bounds, PAGE + 1)).fetchall()
            page = rows[:PAGE]
            for _, value in page:
                decode_record(value)
            decoded += len(page)
            if len(rows) <= PAGE or not page:
                break
            after = page[-1][0]
        elapsed = time.perf_counter() - t0
    finally:
        db.close()
    _check(seq + decoded, expected_ops, "sqlite")
    return elapsed


# -- memory --------------------------------------------------------------------------------


def floor_memory(url: str, agent: type[Agent], snapshot: bool, expected_ops: int) -> float:
    """1,000-value slices of the stored log, as a sorted list (read from the backend
    before the clock starts)."""

    async def snapshot_of() -> tuple[list[str], list[bytes], bytes | None]:
        backend = await connect(url)
        try:
            prefix = LAYOUT.log_prefix(agent.__name__, KEY)
            pairs = [(kv.key, kv.value) for kv in [kv async for kv in backend.scan(prefix)]]
            state = await backend.get(LAYOUT.state(agent.__name__, KEY))
        finally:
            await backend.aclose()
        return [k for k, _ in pairs], [v for _, v in pairs], None if state is None else state.value

    keys, values, stored_snapshot = run_async(snapshot_of, "asyncio")
    decode_record = msgspec.msgpack.Decoder(Record).decode
    decode_snapshot = msgspec.msgpack.Decoder(_Snapshot).decode
    t0 = time.perf_counter()
    lo, seq, decoded = 0, 0, 0
    if snapshot and stored_snapshot is not None:
        seq = decode_snapshot(stored_snapshot).seq
        lo = bisect.bisect_right(keys, LAYOUT.log(agent.__name__, KEY, seq))
    while lo < len(keys):
        page = values[lo : lo + PAGE]
        for value in page:
            decode_record(value)
        decoded += len(page)
        lo += PAGE
    elapsed = time.perf_counter() - t0
    _check(seq + decoded, expected_ops, "memory")
    return elapsed
