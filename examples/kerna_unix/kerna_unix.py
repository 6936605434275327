"""``unix:///path/to/node.sock``: a kerna transport over Unix-domain sockets.

An example of a third-party transport: it uses kerna's public ``kerna.transports`` API
only and is found through its ``kerna.transports`` entry point. Frames are length
prefixed (4 bytes, big-endian); the first frame a sender writes on a connection is its
own address, so the receiver's ``on_frame`` can name it. Each peer this node sends to
has one outgoing connection, a bounded queue and a writer task that writes what was
queued in one go (``writelines``) and waits for the socket to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import struct
from collections import deque
from typing import Any

from kerna import ConfigError
from kerna.transports import (
    FrameCallback,
    FrameTooLarge,
    PeerLostCallback,
    PeerUnreachable,
    SendQueueFull,
    Transport,
    TransportClosed,
)

__all__ = ["UnixTransport"]

log = logging.getLogger("kerna_unix")

_HEADER = struct.Struct(">I")
_MAX_ADDRESS = 4096  # bytes of the hello frame
_MAX_PATH = 107  # sun_path is 108 bytes with its NUL


def _path(url: str) -> str | None:
    """The socket path of ``unix:///abs/path``, None if ``url`` is not one."""
    if not isinstance(url, str) or not url.startswith("unix:///"):
        return None
    path = url[len("unix://") :]
    return path if len(path) > 1 and "\0" not in path else None


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: nobody may be waiting on it


class _Peer:
    """The outgoing connection to one peer: its queue, senders waiting, writer task."""

    def __init__(self, address: str, path: str) -> None:
        self.address = address
        self.path = path
        self.frames: deque[bytes] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wakeup = asyncio.Event()
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    def wake_senders(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def break_(self, error: BaseException) -> None:
        """Drops what is queued; senders waiting (for room or the connection) get ``error``."""
        if self.error is None:
            self.error = error
        self.frames.clear()
        _fail(self.ready, error)
        while self.waiters:
            _fail(self.waiters.popleft(), error)
        self.wakeup.set()


class UnixTransport(Transport):
    """``unix:///path/to/node.sock``: listens on a Unix-domain socket at that path.

    ``start`` takes over a stale socket file (no one listening) and refuses a live one;
    ``aclose`` removes the socket file.

    Args:
        url: ``unix://`` and an absolute path (at most 107 bytes).
        max_frame_size: the largest frame sent or accepted (below 4 GiB).
        send_queue: frames queued per peer before senders wait (or fail).

    Raises:
        ConfigError: a malformed URL or a bad option.
    """

    scheme = "unix"
    pauses = True

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        path = _path(url)
        if path is None or len(os.fsencode(path)) > _MAX_PATH:
            raise ConfigError(
                f"unix transport URL must be 'unix:///absolute/path' "
                f"(at most {_MAX_PATH} bytes), got {url!r}"
            )
        if self.max_frame_size >= 1 << 32:
            raise ConfigError(f"max_frame_size must be below 4 GiB, got {self.max_frame_size}")
        self._path = path
        self._address = f"unix://{path}"
        self._on_frame: FrameCallback | None = None
        self._on_peer_lost: PeerLostCallback | None = None
        self._server: asyncio.Server | None = None
        self._peers: dict[str, _Peer] = {}
        self._inbound: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def address(self) -> str:
        """``unix:///path`` (the URL's; still readable after ``aclose``)."""
        return self._address

    async def start(self, on_frame: FrameCallback, on_peer_lost: PeerLostCallback) -> None:
        """Listens on the socket path.

        Raises:
            ConfigError: something listens there already, or the path is not a socket.
            RuntimeError: already started, or closed.
        """
        if self._server is not None or self._closed:
            raise RuntimeError(f"{self!r} was already started")
        try:
            mode = os.stat(self._path).st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(mode):
                raise ConfigError(f"{self._path} exists and is not a socket")
            try:
                _, probe = await asyncio.open_unix_connection(self._path)
            except OSError:
                os.unlink(self._path)  # a socket no one listens on: left by a dead process
            else:
                probe.close()
                raise ConfigError(f"unix address {self._address!r} is in use")
        self._on_frame, self._on_peer_lost = on_frame, on_peer_lost
        try:
            self._server = await asyncio.start_unix_server(self._serve, self._path)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self._address!r}: {exc}") from exc

    async def send(self, peer: str, frame: bytes, *, wait: bool = True) -> None:
        """Queues ``frame`` for ``peer`` (connecting on the first frame).

        Raises:
            SendQueueFull: the queue is full and ``wait`` is False.
            FrameTooLarge: ``len(frame) > max_frame_size``.
            PeerUnreachable: not a ``unix:///`` address, nothing listens there, or the
                connection was lost while this waited.
            TransportClosed: this transport is closed (or closes while this waits).
            RuntimeError: not started.
        """
        if self._closed:
            raise TransportClosed(f"{self!r} is closed")
        if self._server is None:
            raise RuntimeError(f"{self!r} is not started")
        self.check_frame(frame)
        link = self._peers.get(peer)
        if link is None:
            path = _path(peer)
            if path is None:
                raise PeerUnreachable(f"{peer!r} is not a unix transport address")
            link = self._peers[peer] = _Peer(peer, path)
            link.task = asyncio.create_task(self._write(link), name=f"kerna_unix {peer}")
        if not link.ready.done():
            await link.ready
        while len(link.frames) >= self.send_queue and link.error is None:
            if not wait:
                raise SendQueueFull(f"send queue to {peer} is full ({self.send_queue} frames)")
            waiter = asyncio.get_running_loop().create_future()
            link.waiters.append(waiter)
            await waiter
        if link.error is not None:
            raise link.error
        link.frames.append(bytes(frame))
        link.wakeup.set()

    async def _write(self, link: _Peer) -> None:
        """The writer task of one peer: connect, announce, write batches until lost."""
        try:
            reader, writer = await asyncio.open_unix_connection(link.path)
        except OSError as exc:
            self._drop(link, PeerUnreachable(f"cannot connect to {link.address}: {exc}"))
            return
        try:
            address = self._address.encode()
            writer.write(_HEADER.pack(len(address)) + address)
            link.ready.set_result(None)
            # The peer never writes back: a read returns when it closes the connection.
            watch = asyncio.ensure_future(reader.read(1))
            watch.add_done_callback(lambda _: link.wakeup.set())
            try:
                while True:
                    await link.wakeup.wait()
                    link.wakeup.clear()
                    if link.error is not None:
                        return
                    if watch.done():
                        raise ConnectionResetError(f"{link.address} closed the connection")
                    batch = list(link.frames)
                    link.frames.clear()
                    link.wake_senders()
                    writer.writelines(p for f in batch for p in (_HEADER.pack(len(f)), f))
                    await writer.drain()
            finally:
                watch.cancel()
                await asyncio.wait([watch])  # its own cancel is not raised here; ours is
        except OSError as exc:
            self._drop(link, PeerUnreachable(f"lost {link.address}: {exc}"))
        finally:
            writer.close()

    def _drop(self, link: _Peer, error: PeerUnreachable) -> None:
        """``link`` is gone: fail its senders; tell ``on_peer_lost`` if it was connected."""
        connected = link.ready.done() and link.ready.exception() is None
        link.break_(error)
        if self._peers.get(link.address) is link:
            del self._peers[link.address]  # the next send reconnects
        if connected and not self._closed:
            self._lost(link.address, error)

    def _lost(self, peer: str, error: BaseException) -> None:
        assert self._on_peer_lost is not None
        try:
            self._on_peer_lost(peer, error)
        except Exception:
            log.exception("on_peer_lost(%r) of %s raised", peer, self._address)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads one incoming connection: the sender's address, then its frames."""
        task = asyncio.current_task()
        assert task is not None
        assert self._on_frame is not None
        self._inbound.add(task)
        peer = "an unannounced peer"
        try:
            (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
            if size > _MAX_ADDRESS:
                log.warning("%s: a peer announced an address of %d bytes", self._address, size)
                return
            peer = (await reader.readexactly(size)).decode("utf-8", "replace")
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                if size > self.max_frame_size:  # refused before it is read
                    error = FrameTooLarge(
                        f"{peer} sent a frame of {size} bytes, over the limit of "
                        f"{self.max_frame_size}: connection closed"
                    )
                    log.warning("%s: %s", self._address, error)
                    self._lost(peer, error)
                    return
                frame = await reader.readexactly(size)
                try:
                    pause = self._on_frame(peer, frame)
                except Exception:
                    log.exception("on_frame of %s raised on a frame from %s", self._address, peer)
                    continue
                if pause is not None:  # the receiver asked for no more for now
                    await asyncio.wait((asyncio.ensure_future(pause),))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer closed its connection (its own transport reports its losses)
        finally:
            self._inbound.discard(task)
            writer.close()

    async def aclose(self) -> None:
        """Stops listening, closes every connection, fails waiting senders
        (``TransportClosed``), removes the socket file; idempotent."""
        if self._closed:
            return
        self._closed = True
        closed = TransportClosed(f"{self!r} is closed")
        tasks: list[asyncio.Task[Any]] = list(self._inbound)
        for link in self._peers.values():
            link.break_(closed)
            if link.task is not None:
                tasks.append(link.task)
        self._peers.clear()
        if self._server is not None:
            self._server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
