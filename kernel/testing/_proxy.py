"""A TCP fault proxy: put it between any two parties (a client and etcd, two kerna tcp
transports) and switch faults on and off while they talk.

``FaultProxy`` listens on a free 127.0.0.1 port and forwards each connection to its
target, both ways. Faults, switched at any time (each ``await``-ed, the same API as the
toxiproxy adapter), apply to every connection, open or new, in both directions:

- ``delay(seconds)``: each chunk is forwarded ``seconds`` after it was read (latency,
  not a throughput cap: chunks in flight overlap; a round trip gains 2 x ``seconds``);
- ``reset()``: every open connection is reset on both sides (RST: ``SO_LINGER`` 0, the
  peers see ``ConnectionResetError``), and so is each new one until ``heal()``;
- ``blackhole()``: connections are accepted and kept but nothing is forwarded; what is
  in flight is held (as TCP retransmits across a partition) and delivered after
  ``heal()``, unless the connection is reset or closed first;
- ``drip(nbytes, interval)``: at most ``nbytes`` forwarded per ``interval`` seconds, per
  connection and direction;
- ``heal()``: all faults off; held bytes flow again.

``delay`` and ``drip`` combine; ``reset`` and ``blackhole`` each replace the other.
``fault_proxy()`` gives this proxy, or the toxiproxy one when ``TOXIPROXY_URL`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Iterator
from types import TracebackType

__all__ = ["FaultProxy"]

log = logging.getLogger("kerna.testing.proxy")

_CHUNK = 65536
_EOF = b""


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket with an RST (``SO_LINGER`` on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client's side, the target's side, two pumps."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self.client = client
        self.target = target
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for task in self.tasks:
            task.cancel()
        _rst(self.client)
        _rst(self.target)


class FaultProxy:
    """A TCP proxy to ``target`` (``"host:port"`` or a tuple) with switchable faults (see
    the module docstring). Use ``async with FaultProxy(target) as proxy`` and connect to
    ``proxy.endpoint``.

    Raises:
        ValueError: ``target`` is not ``host:port``.
    """

    def __init__(self, target: str | tuple[str, int], *, host: str = "127.0.0.1") -> None:
        if isinstance(target, str):
            name, sep, port = target.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"FaultProxy target must be 'host:port', got {target!r}")
            target = (name.strip("[]") or "127.0.0.1", int(port))
        self.target = target
        self.host = host
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._delay = 0.0
        self._drip: tuple[int, float] | None = None
        self._resetting = False
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def endpoint(self) -> str:
        """``host:port`` to connect to instead of the target."""
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """How many proxied connections are open."""
        return len(self._links)

    async def start(self) -> FaultProxy:
        """Listen on a free port (``port`` then says which)."""
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        """Stop listening and reset every open connection."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the faults -------------------------------------------------------------------

    async def delay(self, seconds: float) -> None:
        """Forward each chunk ``seconds`` after it was read (0 turns the delay off).

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {seconds}")
        self._delay = seconds

    async def reset(self) -> None:
        """Reset (RST) every open connection on both sides, and each new one until
        ``heal()``."""
        self._resetting = True
        self._flowing.set()
        for link in list(self._links):
            link.reset()
        self._links.clear()

    async def blackhole(self) -> None:
        """Keep connections (and accept new ones) but forward nothing until ``heal()``."""
        self._resetting = False
        self._flowing.clear()

    async def drip(self, nbytes: int, interval: float) -> None:
        """Forward at most ``nbytes`` every ``interval`` seconds per connection and
        direction.

        Raises:
            ValueError: ``nbytes`` < 1 or ``interval`` <= 0.
        """
        if nbytes < 1 or interval <= 0:
            raise ValueError(f"drip needs nbytes >= 1 and interval > 0, got {nbytes}, {interval}")
        self._drip = (nbytes, interval)

    async def heal(self) -> None:
        """Every fault off: traffic flows as without the proxy; held bytes go on."""
        self._delay = 0.0
        self._drip = None
        self._resetting = False
        self._flowing.set()

    # -- forwarding -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.debug("fault proxy %s: target %s refused: %s", self.endpoint, self.target, exc)
            _rst(writer)
            return
        link = _Link(writer, up_writer)
        if self._resetting:  # in reset mode: connected only to be reset
            link.reset()
            return
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        try:
            await asyncio.gather(*link.tasks)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this task is cancelled, not only the link's pumps (a reset)
        finally:
            self._links.discard(link)
            for w in (writer, up_writer):
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Read from ``src`` into a queue; ``_forward`` writes it to ``dst`` when due."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        forward = asyncio.create_task(self._forward(queue, dst))
        try:
            while True:
                await self._flowing.wait()  # blackholed: read no more, hold the rest
                try:
                    data = await src.read(_CHUNK)
                except OSError:  # reset by its peer: pass the reset on
                    _rst(dst)
                    return
                queue.put_nowait((loop.time() + self._delay, data))
                if not data:
                    break
            await forward
        finally:
            forward.cancel()

    async def _forward(
        self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()
            if not data:
                with contextlib.suppress(OSError):
                    if dst.can_write_eof():
                        dst.write_eof()
                return
            try:
                for piece, pause in self._pieces(data):
                    dst.write(piece)
                    await dst.drain()
                    if pause:
                        await asyncio.sleep(pause)
                        await self._flowing.wait()
            except OSError:
                return

    def _pieces(self, data: bytes) -> Iterator[tuple[bytes, float]]:
        """``data`` as the pieces to write, each with the pause after it (drip)."""
        view = memoryview(data)
        while view:
            if self._drip is None:
                yield bytes(view), 0.0
                return
            nbytes, interval = self._drip
            yield bytes(view[:nbytes]), interval
            view = view[nbytes:]
