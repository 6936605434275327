"""Propagation: a write on kernel A until kernel B's replica has applied it.

kerna: two kernels on the same etcd member, in this process and loop, each with its
own backend (its own gRPC channel). Kernel A's agent saves (the clock starts just before
``await self.save``, in the handler); kernel B follows the state prefix with a
``kerna.state.Replica`` built as ``Kernel.replica`` builds it (same backend, prefix,
decoder and key mapping) plus an ``on_change`` hook, which stops the clock when the
new value is applied.

Floor: two gRPC channels built like kerna's. One sends the very same transaction as
kerna's ``save`` (``RawWriter``, clock started before the state is encoded); the other
holds a raw ``Watch`` stream on the prefix, read by a task that msgspec-decodes each
event's value and stops the clock. Writes are one at a time (the next starts after the
previous one was seen), so each sample is one write's propagation alone.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import msgspec
from aetcd import rpc

from kerna import Kernel
from kerna.state import Layout, Replica
from kerna.state._layout import unescape

from ._common import percentile, run_async
from ._state_etcd import METADATA, RawEtcd, prefix_end
from ._state_models import Doc, Write, Writer
from ._state_write import RawWriter

__all__ = ["kerna_propagation", "raw_propagation"]

WARMUP = 20
SEEN_TIMEOUT = 10.0
_runs = itertools.count()


def _result(lat: list[float]) -> dict[str, float]:
    return {"p50": percentile(lat, 50) * 1e6, "p99": percentile(lat, 99) * 1e6}


def kerna_propagation(url: str, n: int) -> dict[str, float]:
    """``n`` saves on kernel A, each timed until kernel B's replica applied it (µs)."""

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        clock = time.perf_counter
        key = f"prop-{next(_runs)}"
        waiting: dict[int, asyncio.Future[float]] = {}

        def on_change(changed: str, value: Doc | None) -> None:
            if changed == key and value is not None:
                fut = waiting.pop(value.n, None)
                if fut is not None and not fut.done():
                    fut.set_result(clock())

        async with Kernel(state=url) as kernel_a, Kernel(state=url) as kernel_b:
            kernel_a.register(Writer)
            name = kernel_b.register(Writer)
            prefix = Layout(kernel_b.state_prefix).states_of(name)
            decode = msgspec.msgpack.Decoder(Doc).decode  # what Kernel.replica decodes with
            replica: Replica[Doc] = Replica(
                kernel_b.state_backend,
                prefix,
                decode=decode,
                on_change=on_change,
                key_of=lambda k: unescape(k[len(prefix) :]),
            )
            async with replica:
                ref = kernel_a.ref(Writer, key)
                lat: list[float] = []
                written = 0
                for i in range(WARMUP + n):
                    fut: asyncio.Future[float] = loop.create_future()
                    waiting[written + 1] = fut
                    written = await ref.ask(Write())
                    seen = await asyncio.wait_for(fut, SEEN_TIMEOUT)
                    if i >= WARMUP:
                        lat.append(seen - Writer.issued[written])
                Writer.issued.clear()
                Writer.save_times.clear()
        return _result(lat)

    return run_async(main, "asyncio")


def raw_propagation(endpoint: str, n: int) -> dict[str, float]:
    """The same with a raw transaction and a raw watch stream (µs)."""

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        clock = time.perf_counter
        space = f"prop-floor-{next(_runs)}"
        writer_conn, watcher_conn = RawEtcd(endpoint), RawEtcd(endpoint)
        writer = RawWriter(writer_conn, "p", space=space)
        decode = msgspec.msgpack.Decoder(Doc).decode
        waiting: dict[int, asyncio.Future[float]] = {}
        call: Any = None

        async def follow() -> None:
            while True:
                response = await call.read()
                for event in response.events:
                    if event.type != rpc.Event.PUT:
                        continue
                    doc = decode(event.kv.value)
                    fut = waiting.pop(doc.n, None)
                    if fut is not None and not fut.done():
                        fut.set_result(clock())

        try:
            await writer.setup()
            prefix = f"{space}/state/".encode()
            call = watcher_conn.watch.Watch(metadata=METADATA)
            create = rpc.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix))
            await call.write(rpc.WatchRequest(create_request=create))
            created = await call.read()
            if not created.created:
                raise RuntimeError("floor watch was not created")
            follower = loop.create_task(follow())
            lat: list[float] = []
            for i in range(WARMUP + n):
                fut: asyncio.Future[float] = loop.create_future()
                waiting[writer.n + 1] = fut
                t0 = clock()
                await writer.write()
                seen = await asyncio.wait_for(fut, SEEN_TIMEOUT)
                if i >= WARMUP:
                    lat.append(seen - t0)
            follower.cancel()
        finally:
            if call is not None:
                call.cancel()
            await writer_conn.close()
            await watcher_conn.close()
        return _result(lat)

    return run_async(main, "asyncio")
