"""A minimal TCP proxy that can blackhole a link, for the cluster partition test.

A stand-in until ``kerna.testing``'s fault proxy lands (issue 9, section 5): the test
points one node's etcd URL at ``Blackhole.port``; ``cut()`` makes the link a black hole
(the connections stay open, every byte either way is dropped, new connections are
accepted and get nothing: what a partition looks like to both ends), ``heal()`` closes
the connections that lost bytes (their streams cannot be resumed: the peers reconnect)
and forwards again.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Blackhole"]


class Blackhole:
    """A proxy from ``127.0.0.1:port`` to ``target`` (see the module docstring)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Blackhole:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self.cut_off = True

    def heal(self) -> None:
        self.cut_off = False
        for writer in list(self._links):
            writer.close()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._links.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            while self.cut_off and not reader.at_eof():  # a new connection into the hole
                await reader.read(65536)
            if reader.at_eof():
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._links.add(upstream)
            pumps = [
                asyncio.ensure_future(self._pump(reader, upstream)),
                asyncio.ensure_future(self._pump(up_reader, writer)),
            ]
            self._tasks.update(pumps)
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                    self._tasks.discard(pump)
        except OSError:
            pass  # a link closed under us (heal, close): the peer reconnects
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self._links.discard(end)
                    end.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.cut_off:
                    continue  # dropped: this stream has lost bytes; heal() closes it
                writer.write(data)
                await writer.drain()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        self.heal()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
