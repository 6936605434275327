"""Helpers for the tcp:// transport tests: a recording node, raw (hostile) peers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kerna.transports._tcp import TcpTransport
from kerna.transports._tcp_handshake import connect

WAIT = 10.0  # every wait in these tests is bounded by this (a loaded machine is slow)


class Sink:
    """Records what a transport hands its callbacks; waits on them, bounded."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self.lost: list[tuple[str, BaseException | None]] = []
        self.frames_when_lost: dict[str, int] = {}  # per peer: frames recorded by then
        self._changed = asyncio.Event()

    def on_frame(self, peer: str, frame: bytes) -> None:
        self.frames.append((peer, frame))
        self._changed.set()

    def on_peer_lost(self, peer: str, error: BaseException | None) -> None:
        self.lost.append((peer, error))
        self.frames_when_lost.setdefault(peer, len(self.frames))
        self._changed.set()

    async def wait_frames(self, count: int, timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                self._changed.clear()
                await self._changed.wait()

    async def wait_lost(self, peer: str, timeout: float = WAIT) -> BaseException | None:
        async with asyncio.timeout(timeout):
            while True:
                for who, error in self.lost:
                    if who == peer:
                        return error
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def node(**options: Any) -> AsyncIterator[tuple[TcpTransport, Sink]]:
    """A started tcp transport on a free 127.0.0.1 port, closed on exit."""
    transport = TcpTransport(options.pop("url", "tcp://127.0.0.1:0"), **options)
    sink = Sink()
    await transport.start(sink.on_frame, sink.on_peer_lost)
    try:
        yield transport, sink
    finally:
        await transport.aclose()


def host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


async def raw_client(
    address: str,
    *,
    handshake: bool = True,
    secret: bytes | None = None,
    me: str = "tcp://127.0.0.1:1",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain socket to ``address``, past the node handshake if ``handshake``."""
    host, port = host_port(address)
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(host, port)
        if handshake:
            await connect(reader, writer, address=me, expected=address, secret=secret, schema=b"")
    return reader, writer


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = WAIT) -> bool:
    """True once the other side closed the connection (reads EOF or a reset)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                if not await reader.read(65536):
                    return True
            except ConnectionError:
                return True
