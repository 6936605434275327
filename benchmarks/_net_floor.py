"""The cross-process floor: length-prefixed msgspec frames over asyncio streams.

The least a node-to-node ask can cost: one TCP connection, a 4-byte big-endian length
and a msgpack ``Frame`` per message, a dict of futures by request id on the caller, a
read loop that splits the stream into frames on each side. The server is the echo
agent and the W6 receiver in one: it replies ``n`` to an ask, counts tells, and answers
a ``DONE`` query (which arrives after every tell on the same ordered connection) with
the ``perf_counter_ns`` of the last tell it handled.

``coalesce=False`` writes each frame with its own ``transport.write`` (a ``send`` per
frame); ``coalesce=True`` queues the frames written in one loop pass and writes them in
one ``send`` at the end of the pass (``loop.call_soon``), capped at ``COALESCE_BYTES``,
as kerna's tcp transport does (ISSUE8 section 2).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import msgspec

__all__ = ["Client", "serve"]

TELL, ASK, REPLY, DONE = 0, 1, 2, 3
COALESCE_BYTES = 256 * 1024
"""At most this many bytes are held for one coalesced write."""
HIGH_WATER = 1024 * 1024
"""A sender awaits ``drain()`` while the socket's write buffer holds more than this."""


class Frame(msgspec.Struct, array_like=True):
    kind: int
    id: int
    n: int


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Frame).decode


def _frame(kind: int, id_: int, n: int) -> bytes:
    body = _encode(Frame(kind, id_, n))
    return len(body).to_bytes(4, "big") + body


class _Out:
    """Writes frames to one stream, each at once or coalesced per loop pass."""

    __slots__ = ("buffered", "coalesce", "loop", "pending", "writer")

    def __init__(self, writer: asyncio.StreamWriter, coalesce: bool) -> None:
        self.writer = writer
        self.coalesce = coalesce
        self.loop = asyncio.get_running_loop()
        self.pending: list[bytes] = []
        self.buffered = 0

    def send(self, frame: bytes) -> None:
        if not self.coalesce:
            self.writer.write(frame)
            return
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(frame)
        self.buffered += len(frame)
        if self.buffered >= COALESCE_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write(b"".join(self.pending))
            self.pending.clear()
            self.buffered = 0

    async def room(self) -> None:
        """Wait while the socket's buffer is over ``HIGH_WATER`` (backpressure)."""
        if self.writer.transport.get_write_buffer_size() > HIGH_WATER:
            await self.writer.drain()


async def _frames(reader: asyncio.StreamReader, on_frame: Callable[[Frame], None]) -> None:
    """Split the stream into frames and hand each to ``on_frame`` until EOF."""
    buf = bytearray()
    while data := await reader.read(1 << 16):
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if end - pos - 4 < size:
                break
            on_frame(_decode(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        del buf[:pos]


async def serve(port: int, coalesce: bool, ready: Callable[[str], None]) -> None:
    """Serve on 127.0.0.1:``port`` until cancelled."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        out = _Out(writer, coalesce)
        count = 0
        last = 0

        def on_frame(f: Frame) -> None:
            nonlocal count, last
            if f.kind == ASK:
                out.send(_frame(REPLY, f.id, f.n))
            elif f.kind == TELL:
                count += 1
                last = time.perf_counter_ns()
            elif f.kind == DONE:
                out.send(_frame(REPLY, f.id, last if count >= f.n else -count))

        try:
            await _frames(reader, on_frame)
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    async with server:
        ready(f"127.0.0.1:{port}")
        await server.serve_forever()


class Client:
    """One connection to a floor server: ``ask`` and ``tell``."""

    def __init__(self, coalesce: bool) -> None:
        self.coalesce = coalesce
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[int]] = {}

    async def connect(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        reader, self.writer = await asyncio.open_connection(host, int(port))
        self.out = _Out(self.writer, self.coalesce)
        self.reading = asyncio.ensure_future(_frames(reader, self._on_frame))

    def _on_frame(self, f: Frame) -> None:
        fut = self.waiting.pop(f.id)
        if not fut.done():
            fut.set_result(f.n)

    async def _request(self, kind: int, n: int) -> int:
        id_ = next(self.ids)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[id_] = fut
        self.out.send(_frame(kind, id_, n))
        return await fut

    async def ask(self, n: int) -> int:
        return await self._request(ASK, n)

    async def tell(self, n: int) -> None:
        self.out.send(_frame(TELL, 0, n))
        await self.out.room()

    async def last_tell_ns(self, n: int) -> int:
        """The receiver's clock when it handled the last of ``n`` tells."""
        last = await self._request(DONE, n)
        if last < 0:
            raise RuntimeError(f"floor W6: the receiver counted {-last:,} of {n:,} tells")
        return last

    async def close(self) -> None:
        self.out.flush()
        self.writer.close()
        self.reading.cancel()
        await asyncio.gather(self.reading, return_exceptions=True)
