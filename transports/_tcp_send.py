"""The send side of the tcp transport: one ``Outbound`` per peer, driven by ``Sender``.

A peer's first send opens its connection (``Sender`` asks the transport's ``connect``:
TCP, TLS and the node handshake) and waits for it; frames are queued per peer in a
bounded queue and written in one ``writelines`` at the end of the loop pass they were
queued in, except the first frame on an idle connection (``IDLE_AFTER``), written at
once. Each peer has a writer task that writes what is queued when the connection opens
or reopens, waits for the socket to drain past ``WRITE_HIGH_WATER`` and reconnects a
broken connection with jittered exponential backoff while frames are queued. See the
``_tcp`` module docstring for the choices as a user sees them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from time import monotonic
from typing import Any
from urllib.parse import urlsplit

from ._base import FrameTooLarge, PeerUnreachable, SendQueueFull
from ._tcp_framing import ProtocolError, header, read_frame
from ._tcp_handshake import PeerInfo

__all__ = ["COALESCE_BYTES", "IDLE_AFTER", "WRITE_HIGH_WATER", "Conn", "Outbound", "Sender"]

log = logging.getLogger("kerna.transports.tcp")

IDLE_AFTER = 50e-6
"""Seconds after a connection's last write, when that write carried one frame, from
which the connection counts as idle: a frame queued on an idle connection is written at
once instead of at the end of the loop pass, so a lone request or reply does not wait a
loop pass (Linux's TCP autocorking makes the same choice). A busy connection, whose
last write carried several frames or came less than this ago, keeps coalescing."""
WRITE_HIGH_WATER = 64 * 1024
"""Bytes a connection's socket buffer may hold before writing waits for it to drain
(asyncio's own default high-water mark)."""
COALESCE_BYTES = 256 * 1024
"""Bytes queued for a peer in one loop pass at which they are written at once, not at
the end of the pass: a sender that queues a lot without yielding (large frames, a
node's batch frames) keeps the peer busy meanwhile, instead of handing it everything
when it is done."""

Connect = Callable[
    [str, str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter, PeerInfo]]
]
"""Opens a connection to (address, host, port) through TLS and the handshake; raises
``PeerUnreachable``."""


def split_address(url: str, what: str) -> tuple[str, int]:
    """The host and port of ``tcp://host:port``.

    Raises:
        ValueError: ``url`` is not one (the message names ``what`` it was).
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path:
        raise ValueError(f"{what} {url!r} is not tcp://host:port")
    return parts.hostname, port


class Conn:
    """One established connection (either direction), as the heartbeat sees it."""

    __slots__ = ("error", "last_rx", "last_tx", "paused", "peer", "superseded", "writer")

    def __init__(self, peer: str, writer: asyncio.StreamWriter, now: float) -> None:
        self.peer = peer
        self.writer = writer
        self.last_rx = now
        self.last_tx = now
        self.error: BaseException | None = None  # why the heartbeat closed it
        self.paused = False  # the receiver asked for no more frames from it for now
        self.superseded = False  # the peer connected again: drop what is left of this one


class Outbound:
    """The send side of one peer: its bounded queue, waiting senders, connection."""

    __slots__ = (
        "address",
        "broken",
        "conn",
        "draining",
        "early",
        "flushing",
        "host",
        "lone_at",
        "port",
        "queue",
        "queued_bytes",
        "ready",
        "reserved",
        "task",
        "up",
        "waiters",
    )

    def __init__(self, address: str, host: str, port: int) -> None:
        self.address = address
        self.host = host
        self.port = port
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0  # in the queue
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.reserved = 0  # room promised to woken waiters that have not appended yet
        self.ready = asyncio.Event()  # the writer has something to do
        self.up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.up.add_done_callback(_retrieve)
        self.conn: Conn | None = None
        self.broken: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.flushing = False  # a flush is scheduled at the end of this loop pass
        self.draining = False  # the writer task waits for the socket to drain
        # When the last write was, if it carried one frame (inf: it carried several,
        # the connection is busy); time.monotonic: uvloop's loop.time() moves in ms
        self.lone_at = -math.inf
        self.early = 0  # 1: a frame written at once this pass still holds its room


def _retrieve(future: asyncio.Future[None]) -> None:
    # The first connect's outcome is awaited by the senders that were waiting; mark it
    # retrieved so an outcome nobody awaited (all cancelled) is not logged as lost.
    if not future.cancelled():
        future.exception()


class Sender:
    """Every peer's ``Outbound`` of one transport, their writer tasks and counters.

    Args:
        send_queue: frames queued per peer before senders wait (or fail).
        connect: opens a connection (TCP, TLS, handshake) to a peer.
        conns: the transport's open connections (the heartbeat's); a connection this
            opens is added, one that ends is removed.
        spawn: starts a task the transport owns (cancelled at its close).
        handshaken: called with a peer and what it said once its connection is up.
        lost: called with a peer and why, when its connection breaks.
        reconnect_attempts: reconnects tried for a broken connection with frames
            queued before they are dropped.
        backoff: the first and the longest reconnect delay.
    """

    def __init__(
        self,
        *,
        send_queue: int,
        connect: Connect,
        conns: set[Conn],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        handshaken: Callable[[str, PeerInfo], None],
        lost: Callable[[str, BaseException | None], None],
        reconnect_attempts: int,
        backoff: tuple[float, float],
    ) -> None:
        self.send_queue = send_queue
        self._connect = connect
        self._conns = conns
        self._spawn = spawn
        self._handshaken = handshaken
        self._lost = lost
        self._attempts = reconnect_attempts
        self._backoff = backoff
        self._loop = asyncio.get_running_loop()
        self._out: dict[str, Outbound] = {}
        self.writes = 0  # socket writes of frames
        self.frames_written = 0
        self.bytes_written = 0  # with the length prefixes
        self.errors = 0  # frame batches dropped when a peer was given up

    async def send(self, peer: str, frame: bytes, wait: bool) -> None:
        """Queue ``frame`` for ``peer`` (its first send waits for its connection).

        Raises:
            SendQueueFull: the queue is full and ``wait`` is False.
            PeerUnreachable: ``peer`` is not ``tcp://host:port``, or its connection
                cannot be opened (or was given up while this waited for room).
        """
        while True:
            out = self._out.get(peer)
            if out is None:
                try:
                    host, port = split_address(peer, "peer address")
                except ValueError as exc:
                    raise PeerUnreachable(str(exc)) from None
                out = self._out[peer] = Outbound(peer, host, port)
                out.task = self._spawn(self._run(out))
            if out.up.done():  # connected (a failed one is no longer in _out)
                break
            # Raises PeerUnreachable (or TransportClosed); once connected, look again:
            # the connection may have been lost and forgotten before this resumed.
            await asyncio.shield(out.up)
        if out.waiters or len(out.queue) + out.reserved + out.early >= self.send_queue:
            if not wait:
                raise SendQueueFull(f"the send queue to {peer} is full ({self.send_queue} frames)")
            await self._room(out)
        out.queue.append(frame)
        out.queued_bytes += len(frame)
        self._queued(out)

    def send_now(self, peer: str, frame: bytes) -> bool:
        """Queue ``frame`` if ``peer`` is connected with room in its queue (the frame
        was checked); False (nothing done) otherwise."""
        out = self._out.get(peer)
        if (
            out is None
            or not out.up.done()
            or out.waiters
            or len(out.queue) + out.reserved + out.early >= self.send_queue
        ):
            return False
        out.queue.append(frame)
        out.queued_bytes += len(frame)
        self._queued(out)
        return True

    def close(self, error: BaseException) -> list[Conn]:
        """Give every peer up with ``error``; what is queued for a connected one is
        written first, then its stream ended (``_end``). Returns those connections:
        each one's writer is closed once its peer has closed its side."""
        ending = [conn for out in self._out.values() if (conn := self._end(out, error))]
        for out in list(self._out.values()):
            self._fail(out, error)
        return ending

    def _end(self, out: Outbound, error: BaseException) -> Conn | None:
        """Write what is queued on ``out``'s connection and end its stream (TLS: close
        it, which ends it with close_notify); the peer, having read up to there,
        closes its side. None if there is no live connection."""
        conn = out.conn
        if conn is None or out.broken is not None:
            return None
        out.broken = error  # nothing is written on it from now on (a late flush)
        self._conns.discard(conn)  # no heartbeat on it either; it ends on its own
        transport = conn.writer.transport
        try:
            if out.queue:
                self._write(out, conn, wake=False)  # its waiters fail: no room to give
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        except (OSError, RuntimeError):  # broken meanwhile (RuntimeError: already ended)
            transport.abort()
            return None
        return conn

    async def _room(self, out: Outbound) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        out.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                out.reserved -= 1  # woken, then cancelled: pass the room on
                self._wake(out)
            else:
                try:
                    out.waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        out.reserved -= 1

    def _wake(self, out: Outbound) -> None:
        room = self.send_queue - len(out.queue) - out.reserved - out.early
        while room > 0 and out.waiters:
            waiter = out.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                out.reserved += 1
                room -= 1

    def _fail(self, out: Outbound, error: BaseException) -> None:
        """Give ``out`` up: drop its queue, fail its waiting senders, forget it."""
        if self._out.get(out.address) is out:
            del self._out[out.address]
        if out.queue:
            self.errors += 1
            log.warning("dropped %s frames queued for %s: %s", len(out.queue), out.address, error)
            out.queue.clear()
            out.queued_bytes = 0
        while out.waiters:
            waiter = out.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if not out.up.done():
            out.up.set_exception(error)

    async def _open(self, out: Outbound) -> None:
        """Connect to ``out``; its reader runs from here on.

        Raises:
            PeerUnreachable: the connection, TLS or the handshake failed or timed out.
        """
        reader, writer, info = await self._connect(out.address, out.host, out.port)
        conn = Conn(out.address, writer, self._loop.time())
        self._conns.add(conn)
        out.conn = conn
        out.broken = None
        self._handshaken(out.address, info)
        self._spawn(self._read(out, conn, reader))

    async def _read(self, out: Outbound, conn: Conn, reader: asyncio.StreamReader) -> None:
        """Reads the heartbeats a peer sends back; its end is the connection's end."""
        loop = self._loop
        error: BaseException
        try:
            while True:
                if await read_frame(reader, 0) is not None:
                    raise ProtocolError("the peer sent a data frame on our outbound connection")
                conn.last_rx = loop.time()
        except (OSError, EOFError, FrameTooLarge) as exc:
            error = conn.error or exc
        self._conns.discard(conn)
        conn.writer.transport.abort()
        if out.conn is conn:
            out.broken = error
            out.ready.set()

    async def _run(self, out: Outbound) -> None:
        try:
            await self._write_loop(out)
        finally:
            # However the writer ends (a bug included), nobody keeps waiting on it.
            self._fail(out, PeerUnreachable(f"the connection to {out.address} ended"))

    async def _write_loop(self, out: Outbound) -> None:
        """The peer's writer: opens the connection, writes everything queued in one
        write per wake-up, reopens a broken connection while frames are queued."""
        try:
            await self._open(out)
        except PeerUnreachable as exc:
            self._fail(out, exc)
            return
        out.up.set_result(None)
        while True:
            conn = out.conn
            assert conn is not None
            error = await self._pump(out, conn)
            self._conns.discard(conn)
            conn.writer.transport.abort()
            out.conn = None
            self._lost(out.address, error)
            if not out.queue and not out.waiters:
                # Nothing waits: forget the peer; the next send reconnects.
                self._fail(out, error)
                return
            if not await self._reopen(out):
                return

    async def _pump(self, out: Outbound, conn: Conn) -> BaseException:
        """Write until the connection breaks; returns why it broke.

        A connected peer's frames are written by ``_flush`` at the end of the loop pass
        they were queued in; this task writes what is queued when the connection opens
        or reopens, and waits for the socket to drain when it holds more than
        ``WRITE_HIGH_WATER`` (meanwhile frames stay queued: senders feel it)."""
        writer = conn.writer
        while True:
            if out.broken is not None:
                return out.broken
            try:
                if out.queue:
                    self._write(out, conn)
                if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    out.draining = True
                    try:
                        await writer.drain()
                    finally:
                        out.draining = False
                    continue
            except OSError as exc:
                return conn.error or exc
            out.ready.clear()
            await out.ready.wait()

    def _queued(self, out: Outbound) -> None:
        """A frame was queued: on an idle connection (``IDLE_AFTER``) write it now,
        else write the pass's frames in one write at its end (or now, once they are
        ``COALESCE_BYTES``)."""
        if out.flushing:
            if out.queued_bytes >= COALESCE_BYTES:
                conn = out.conn
                if (  # and the socket takes them (else they wait: senders feel it)
                    conn is not None
                    and not out.draining
                    and conn.writer.transport.get_write_buffer_size() <= WRITE_HIGH_WATER
                ):
                    self._flush(out)  # the end-of-pass flush writes what comes after
            return
        conn = out.conn
        if conn is not None and monotonic() - out.lone_at > IDLE_AFTER:
            # Written now, the frame keeps its room in the queue until the pass ends:
            # a burst of sends that does not yield still finds the queue full after
            # send_queue frames (the transport contract's backpressure).
            out.early = 1
            self._flush(out)
        out.flushing = True
        self._loop.call_soon(self._scheduled_flush, out)

    def _scheduled_flush(self, out: Outbound) -> None:
        out.flushing = False
        if out.early:
            out.early = 0
            if out.waiters and not out.queue:
                self._wake(out)
        self._flush(out)

    def _flush(self, out: Outbound) -> None:
        if not out.queue:
            return
        conn = out.conn
        if conn is None or out.broken is not None or out.draining:
            out.ready.set()  # the writer task takes them (connecting, broken, draining)
            return
        try:
            self._write(out, conn)
        except OSError:
            out.ready.set()  # the writer task finds out why
            return
        if conn.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            out.ready.set()  # the writer task waits for the socket to drain

    def _write(self, out: Outbound, conn: Conn, *, wake: bool = True) -> None:
        """Write everything queued for ``out`` in one ``writelines`` (and give the room
        to senders waiting for it, if ``wake``).

        Raises:
            OSError: the transport refused it.
        """
        frames = out.queue
        out.queue = deque()
        out.queued_bytes = 0
        chunks: list[bytes] = []
        size = 0
        for frame in frames:
            length = len(frame)
            size += length
            chunks.append(header(length))
            chunks.append(frame)
        if wake:
            self._wake(out)
        out.lone_at = monotonic() if len(frames) == 1 else math.inf
        conn.writer.writelines(chunks)
        self.writes += 1
        self.frames_written += len(frames)
        self.bytes_written += size + 4 * len(frames)
        conn.last_tx = self._loop.time()

    async def _reopen(self, out: Outbound) -> bool:
        """Reconnect with jittered exponential backoff; False if it gave up."""
        initial, longest = self._backoff
        error: PeerUnreachable | None = None
        for attempt in range(self._attempts):
            await asyncio.sleep(min(longest, initial * 2**attempt) * random.uniform(0.5, 1.0))
            try:
                await self._open(out)
                return True
            except PeerUnreachable as exc:
                error = exc
                log.info(
                    "reconnect %s/%s to %s failed: %s",
                    attempt + 1,
                    self._attempts,
                    out.address,
                    exc,
                )
        self._fail(out, error or PeerUnreachable(f"gave up reconnecting to {out.address}"))
        return False
