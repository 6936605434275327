"""etcd state writes: kerna's ``save`` against the same transaction sent raw.

kerna's ``save`` is one etcd ``Txn``: compare the claim's create revision (the fencing
token) and the state key's mod revision; on success put the encoded state; on failure
get both keys. The floor sends that very request (same compares, same success and
failure branches) through aetcd's gRPC ``KVStub`` on a channel set up like kerna's (same
options, ``hasleader`` metadata, 2 s per-call timeout), encoding the state with msgspec
and building the protobuf request inside the timed section, as kerna does. A second
reference sends it through ``aetcd.Client.transaction`` (aetcd's own high-level client).

Every writer uses its own keys, fresh per run; latency is sequential, throughput is
32 writers at once (32 agents asked by 32 callers in kerna; 32 coroutines raw).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aetcd
import msgspec
from aetcd import rpc

from kerna import Kernel
from kerna.state import Compare, Get, Put, StateBackend, connect

from ._common import percentile, run_async
from ._state_etcd import CALL_TIMEOUT, METADATA, RawEtcd
from ._state_models import PAD, Doc, Write, Writer

__all__ = [
    "RawWriter",
    "backend_latency",
    "backend_throughput",
    "client_latency",
    "client_throughput",
    "kerna_latency",
    "kerna_throughput",
    "raw_latency",
    "raw_throughput",
]

WARMUP = 20
_runs = itertools.count()


def _us(samples: list[float]) -> tuple[float, float]:
    return percentile(samples, 50) * 1e6, percentile(samples, 99) * 1e6


# -- kerna -------------------------------------------------------------------------------


def kerna_latency(url: str, n: int) -> dict[str, float]:
    """``n`` sequential asks, each saving once: p50/p99 of the ``save`` call (timed in
    the handler) and of the whole ask (timed by the caller)."""

    async def main() -> dict[str, float]:
        async with Kernel(state=url) as kernel:
            kernel.register(Writer)
            ref = kernel.ref(Writer, f"lat-{next(_runs)}")
            for _ in range(WARMUP):  # activation (claim) and first writes
                await ref.ask(Write())
            Writer.save_times.clear()
            clock = time.perf_counter
            asks: list[float] = []
            for _ in range(n):
                t0 = clock()
                await ref.ask(Write())
                asks.append(clock() - t0)
            saves = list(Writer.save_times)
            Writer.save_times.clear()
            Writer.issued.clear()
        save_p50, save_p99 = _us(saves)
        ask_p50, ask_p99 = _us(asks)
        return {"save_p50": save_p50, "save_p99": save_p99, "p50": ask_p50, "p99": ask_p99}

    return run_async(main, "asyncio")


def _rates(writes: int, wall: float, cpu: float) -> dict[str, float]:
    """writes/s, and this process's CPU time (every thread) per write in µs."""
    return {"rate": writes / wall, "cpu_us": cpu / writes * 1e6}


def kerna_throughput(url: str, writers: int, per_writer: int) -> dict[str, float]:
    """``writers`` agents, each asked ``per_writer`` times by its own caller: writes/s
    and CPU µs per write."""

    async def main() -> dict[str, float]:
        async with Kernel(state=url) as kernel:
            kernel.register(Writer)
            tag = next(_runs)
            refs = [kernel.ref(Writer, f"tp-{tag}-{i}") for i in range(writers)]
            await asyncio.gather(*(ref.ask(Write()) for ref in refs))  # activate all
            Writer.save_times.clear()
            Writer.issued.clear()

            async def caller(i: int) -> None:
                ref = refs[i]
                for _ in range(per_writer):
                    await ref.ask(Write())

            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(caller(i) for i in range(writers)))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return _rates(writers * per_writer, wall, cpu)

    return run_async(main, "asyncio")


# -- the raw transaction -----------------------------------------------------------------

Send = Callable[[], Awaitable[None]]


class RawWriter:
    """One floor writer on the gRPC stub: its claim, its state key, its revision."""

    def __init__(self, etcd: RawEtcd, name: str, space: str = "floor") -> None:
        self.etcd = etcd
        self.claim = f"{space}/act/{name}".encode()
        self.key = f"{space}/state/{name}".encode()
        self.token = 0
        self.rev = 0
        self.n = 0
        self.encode = msgspec.msgpack.Encoder().encode

    async def setup(self) -> None:
        self.token = await self.etcd.put(self.claim, b"claim")

    async def write(self) -> None:
        self.n += 1
        data = self.encode(Doc(self.n, PAD))
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=self.claim,
                    target=rpc.Compare.CREATE,
                    result=rpc.Compare.EQUAL,
                    create_revision=self.token,
                ),
                rpc.Compare(
                    key=self.key,
                    target=rpc.Compare.MOD,
                    result=rpc.Compare.EQUAL,
                    mod_revision=self.rev,
                ),
            ],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=self.key, value=data))],
            failure=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=self.claim)),
                rpc.RequestOp(request_range=rpc.RangeRequest(key=self.key)),
            ],
        )
        response: Any = await self.etcd.kv.Txn(request, timeout=CALL_TIMEOUT, metadata=METADATA)
        if not response.succeeded:
            raise RuntimeError(f"floor write to {self.key!r} lost its compare")
        self.rev = response.header.revision


class _ClientWriter:
    """The same transaction through ``aetcd.Client.transaction``."""

    def __init__(self, client: aetcd.Client, name: str) -> None:
        self.client = client
        self.claim = f"client/act/{name}".encode()
        self.key = f"client/state/{name}".encode()
        self.token = 0
        self.rev = 0
        self.n = 0
        self.encode = msgspec.msgpack.Encoder().encode

    async def setup(self) -> None:
        result = await self.client.put(self.claim, b"claim")
        self.token = result.header.revision

    async def write(self) -> None:
        self.n += 1
        data = self.encode(Doc(self.n, PAD))
        t = self.client.transactions
        ok, responses = await self.client.transaction(
            compare=[t.create(self.claim) == self.token, t.mod(self.key) == self.rev],
            success=[t.put(self.key, data)],
            failure=[t.get(self.claim), t.get(self.key)],
        )
        if not ok:
            raise RuntimeError(f"client write to {self.key!r} lost its compare")
        self.rev = responses[0].response_put.header.revision


class _BackendWriter:
    """The same transaction through kerna's etcd backend (``backend.txn``), no agent."""

    def __init__(self, backend: StateBackend, name: str) -> None:
        self.backend = backend
        self.claim = f"backend/act/{name}"
        self.key = f"backend/state/{name}"
        self.token = 0
        self.rev = 0
        self.n = 0
        self.encode = msgspec.msgpack.Encoder().encode

    async def setup(self) -> None:
        self.token = await self.backend.create(self.claim, b"claim")

    async def write(self) -> None:
        self.n += 1
        data = self.encode(Doc(self.n, PAD))
        result = await self.backend.txn(
            [Compare.created_at(self.claim, self.token), Compare.mod_is(self.key, self.rev)],
            [Put(self.key, data)],
            [Get(self.claim), Get(self.key)],
        )
        if not result.succeeded:
            raise RuntimeError(f"backend write to {self.key!r} lost its compare")
        self.rev = result.revision


AnyWriter = RawWriter | _ClientWriter | _BackendWriter


async def _sequential(writer: AnyWriter, n: int) -> dict[str, float]:
    await writer.setup()
    for _ in range(WARMUP):
        await writer.write()
    clock = time.perf_counter
    lat: list[float] = []
    for _ in range(n):
        t0 = clock()
        await writer.write()
        lat.append(clock() - t0)
    p50, p99 = _us(lat)
    return {"p50": p50, "p99": p99}


async def _concurrent(writers: list[AnyWriter], per_writer: int) -> dict[str, float]:
    await asyncio.gather(*(w.setup() for w in writers))
    await asyncio.gather(*(w.write() for w in writers))

    async def loop(w: AnyWriter) -> None:
        for _ in range(per_writer):
            await w.write()

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(w) for w in writers))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return _rates(len(writers) * per_writer, wall, cpu)


def backend_latency(url: str, n: int) -> dict[str, float]:
    """The transaction through kerna's backend alone: where kerna's layers above it
    (agent, ask, persistence) start."""

    async def main() -> dict[str, float]:
        backend = await connect(url)
        try:
            return await _sequential(_BackendWriter(backend, f"lat-{next(_runs)}"), n)
        finally:
            await backend.aclose()

    return run_async(main, "asyncio")


def backend_throughput(url: str, writers: int, per_writer: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        backend = await connect(url)
        tag = next(_runs)
        try:
            ws: list[AnyWriter] = [_BackendWriter(backend, f"tp-{tag}-{i}") for i in range(writers)]
            return await _concurrent(ws, per_writer)
        finally:
            await backend.aclose()

    return run_async(main, "asyncio")


def raw_latency(endpoint: str, n: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        etcd = RawEtcd(endpoint)
        try:
            return await _sequential(RawWriter(etcd, f"lat-{next(_runs)}"), n)
        finally:
            await etcd.close()

    return run_async(main, "asyncio")


def raw_throughput(endpoint: str, writers: int, per_writer: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        etcd = RawEtcd(endpoint)
        tag = next(_runs)
        try:
            ws: list[AnyWriter] = [RawWriter(etcd, f"tp-{tag}-{i}") for i in range(writers)]
            return await _concurrent(ws, per_writer)
        finally:
            await etcd.close()

    return run_async(main, "asyncio")


def _client(endpoint: str) -> aetcd.Client:
    host, port = endpoint.rsplit(":", 1)
    return aetcd.Client(host, int(port), timeout=int(CALL_TIMEOUT))


def client_latency(endpoint: str, n: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        client = _client(endpoint)
        await client.connect()
        try:
            return await _sequential(_ClientWriter(client, f"lat-{next(_runs)}"), n)
        finally:
            await client.close()

    return run_async(main, "asyncio")


def client_throughput(endpoint: str, writers: int, per_writer: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        client = _client(endpoint)
        await client.connect()
        tag = next(_runs)
        try:
            ws: list[AnyWriter] = [_ClientWriter(client, f"tp-{tag}-{i}") for i in range(writers)]
            return await _concurrent(ws, per_writer)
        finally:
            await client.close()

    return run_async(main, "asyncio")
