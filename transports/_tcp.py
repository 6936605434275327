"""``tcp://host:port``: frames over asyncio streams between kerna nodes.

Each node listens on its address and opens one outbound connection per peer it sends
to, so a pair of nodes talks over two connections (each carries one direction's frames
plus heartbeats back). Every connection starts with the node handshake
(``_tcp_handshake``: addresses, protocol version, schema fingerprints, HMAC proof of
the cluster secret) inside TLS when configured; no frame is delivered before it
succeeds. This module is the transport's face, its accepted connections and the
heartbeat; the send side is ``_tcp_send`` (one ``Outbound`` per peer), the receive side
of an accepted connection ``_tcp_receive``.

Choices where the contract leaves room (what an Akka/Orleans user expects):

- The first send to a peer opens the connection and waits for it (connect, TLS and
  handshake, bounded by ``connect_timeout``): if that fails the send raises
  ``PeerUnreachable`` at once and nothing is queued; the next send tries again.
- A connection that breaks is reported to ``on_peer_lost``. Frames still queued for it
  (not yet written) are kept and the connection is reopened with jittered exponential
  backoff (``backoff_initial`` doubling up to ``backoff_max``, ``reconnect_attempts``
  tries); if it gives up, the queued frames are dropped (logged) and senders waiting
  for room get ``PeerUnreachable``. Frames already written to a socket that broke may
  be lost: delivery is at most once, the kernel's asks time out.
- Frames queued in one loop turn go out in one write (``writelines``) per peer, with
  one exception that costs a busy connection nothing: the first frame queued on an idle
  connection (``IDLE_AFTER``) is written at once, so a lone request or reply does not
  wait for the end of the loop pass; the rest of that pass's frames go out together,
  or every ``COALESCE_BYTES`` (256 KiB) for a pass that queues more, so that a sender
  that does not yield keeps its peer busy meanwhile.
- Closing sends connected peers the frames still queued for them, then ends each
  outbound stream and waits (``CLOSE_WAIT`` at most) for the peer to close its side
  before closing the connections peers send on: a peer reads the last frames (a
  stopping kernel's error replies) before it sees this node go.
- Heartbeats: an idle connection carries a ping every ``heartbeat / 2`` seconds; a
  connection that receives nothing for ``heartbeat * heartbeat_misses`` seconds (a
  SIGSTOPped peer, a half-open TCP connection) is closed and its peer reported lost.
  ``heartbeat=None`` turns them off.
- Without a ``secret`` on either side connections are allowed; a secret on one side
  only is refused.
- ``peer_info(address)`` is what a peer said in its latest handshake (its address,
  protocol version and ``schema``, the opaque fingerprints the kernel passes as the
  ``schema`` option).
- Hostile peers are bounded: a length prefix over ``max_frame_size`` closes the
  connection before anything is allocated; an accepted connection has
  ``handshake_timeout`` to finish TLS and the handshake (a slow loris, a connection
  that never speaks), and at most ``max_handshakes`` may be in it at once; a closed
  connection leaves no task. ``stats()`` counts writes, connections and tasks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine, Mapping
from typing import Any, cast

from kerna._errors import ConfigError

from ._base import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_SEND_QUEUE,
    FrameCallback,
    FrameTooLarge,
    PeerLostCallback,
    PeerUnreachable,
    Transport,
    TransportClosed,
)
from ._tcp_framing import (
    MAX_WIRE_FRAME,
    PING_BYTES,
    ProtocolError,
)
from ._tcp_handshake import PeerInfo, accept, connect
from ._tcp_receive import FrameReceiver
from ._tcp_send import IDLE_AFTER, WRITE_HIGH_WATER, Conn, Sender, split_address

__all__ = ["IDLE_AFTER", "WRITE_HIGH_WATER", "PeerInfo", "TcpTransport", "tls_contexts"]

log = logging.getLogger("kerna.transports.tcp")

CLOSE_WAIT = 0.5
"""Seconds ``aclose`` waits at most for peers to read the last frames sent to them
(and close their side) before it closes the connections they send on."""


def tls_contexts(
    certfile: str,
    keyfile: str,
    cafile: str,
    *,
    require_client_cert: bool = True,
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The (server, client) contexts for mutual TLS inside one CA.

    Both sides present ``certfile`` and trust only ``cafile``; the client checks the
    server's name against the peer address's host.

    Raises:
        ConfigError: a file cannot be read or is not a certificate/key.
    """
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cafile)
        server.load_cert_chain(certfile, keyfile)
        server.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        client.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS files ({certfile}, {keyfile}, {cafile}): {exc}"
        ) from exc
    return server, client


def _format(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class TcpTransport(Transport):
    """Frames over TCP (see the module docstring for the behaviour).

    Args:
        url: ``tcp://host:port`` to listen on (port 0 picks a free one).
        max_frame_size: the largest frame sent or accepted (at most 2**31 - 1).
        send_queue: frames queued per peer before senders wait (or fail).
        secret: the cluster secret both sides prove by HMAC; None for none.
        schema: opaque fingerprints sent in the handshake (``peer_info`` reads a
            peer's).
        advertise: the address announced to peers, when it is not the listen URL
            (listening on 0.0.0.0, behind NAT).
        heartbeat: seconds between liveness checks; None turns heartbeats off.
        heartbeat_misses: heartbeat intervals of silence before a peer is lost.
        handshake_timeout: seconds an accepted connection has to finish TLS and the
            handshake (bounds a slow or silent client).
        max_handshakes: accepted connections that may be in their handshake at once;
            more are closed at once (bounds a flood of connections that never speak).
        max_connections: accepted connections that may be open after their handshake
            at once (each holds a reader and up to a frame's worth of buffer); while
            that many are, new ones are closed at once, logged (bounds peers that know
            the secret).
        connect_timeout: seconds an outbound connect, TLS and handshake may take.
        reconnect_attempts: reconnects tried for a broken connection with frames
            queued before they are dropped.
        backoff_initial: the first reconnect delay; doubled per attempt, jittered.
        backoff_max: the longest reconnect delay.
        ssl_server: the TLS context the listener uses (``tls_contexts`` makes one).
        ssl_client: the TLS context outbound connections use.
        tls: mutual TLS from files instead of contexts: ``{"certfile", "keyfile",
            "cafile"}`` and optionally ``"require_client_cert"`` (True), passed to
            ``tls_contexts`` for both directions.

    Attributes:
        close_wait: seconds ``aclose`` waits at most for peers to read the last frames
            (``CLOSE_WAIT``; a stopping kernel lowers it to what is left of its stop's
            bound).

    Raises:
        ConfigError: a malformed URL or a bad option.
    """

    scheme = "tcp"
    pauses = True

    def __init__(
        self,
        url: str,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        send_queue: int = DEFAULT_SEND_QUEUE,
        secret: bytes | str | None = None,
        schema: bytes | str = b"",
        advertise: str | None = None,
        heartbeat: float | None = 1.0,
        heartbeat_misses: int = 3,
        handshake_timeout: float = 5.0,
        max_handshakes: int = 256,
        max_connections: int = 1024,
        connect_timeout: float = 5.0,
        reconnect_attempts: int = 5,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        tls: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(url, max_frame_size=max_frame_size, send_queue=send_queue)
        try:
            self._host, self._port = split_address(url, "listen URL")
            if advertise is not None:
                split_address(advertise, "advertised address")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if max_frame_size > MAX_WIRE_FRAME:
            raise ConfigError(f"max_frame_size must be <= {MAX_WIRE_FRAME}, got {max_frame_size}")
        for name, value in (
            ("heartbeat", 1.0 if heartbeat is None else heartbeat),
            ("handshake_timeout", handshake_timeout),
            ("connect_timeout", connect_timeout),
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
        for name, count in (
            ("heartbeat_misses", heartbeat_misses),
            ("max_handshakes", max_handshakes),
            ("max_connections", max_connections),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {count!r}")
        if isinstance(reconnect_attempts, bool) or not isinstance(reconnect_attempts, int):
            raise ConfigError(f"reconnect_attempts must be an int >= 0, got {reconnect_attempts!r}")
        if reconnect_attempts < 0:
            raise ConfigError(f"reconnect_attempts must be an int >= 0, got {reconnect_attempts!r}")
        if not isinstance(schema, bytes | str):
            raise ConfigError(f"schema must be bytes or str, got {type(schema).__qualname__}")
        self._secret = secret.encode() if isinstance(secret, str) else secret
        if self._secret is not None and not self._secret:
            raise ConfigError("secret must not be empty (use None for no secret)")
        self._schema = schema
        self._advertise = advertise
        self._heartbeat = heartbeat
        self._misses = heartbeat_misses
        self._handshake_timeout = handshake_timeout
        self._max_handshakes = max_handshakes
        self._handshaking = 0
        self._max_connections = max_connections
        self._accepted = 0  # accepted connections past their handshake
        self._connect_timeout = connect_timeout
        self._attempts = reconnect_attempts
        self._backoff = (backoff_initial, backoff_max)
        if tls is not None:
            if ssl_server is not None or ssl_client is not None:
                raise ConfigError("give either tls= or ssl_server=/ssl_client=, not both")
            if not isinstance(tls, Mapping):
                raise ConfigError(f"tls must be a mapping of TLS files, got {tls!r}")
            unknown = set(tls) - {"certfile", "keyfile", "cafile", "require_client_cert"}
            missing = {"certfile", "keyfile", "cafile"} - set(tls)
            if unknown or missing:
                raise ConfigError(
                    f"tls needs certfile, keyfile and cafile (missing: {sorted(missing)}, "
                    f"unknown: {sorted(unknown)})"
                )
            ssl_server, ssl_client = tls_contexts(
                str(tls["certfile"]),
                str(tls["keyfile"]),
                str(tls["cafile"]),
                require_client_cert=bool(tls.get("require_client_cert", True)),
            )
        self._ssl_server = ssl_server
        self._ssl_client = ssl_client
        self._address: str | None = None
        self._server: asyncio.Server | None = None
        self._on_frame: FrameCallback | None = None
        self._on_peer_lost: PeerLostCallback | None = None
        self._sender: Sender | None = None  # made by start (it needs the running loop)
        self._conns: set[Conn] = set()
        self._inbound: dict[str, Conn] = {}  # per peer, its latest accepted connection
        self._tasks: set[asyncio.Task[None]] = set()
        # Accepted connections' tasks (asyncio's, running _serve) and their writers:
        # closed by aborting the connection, not cancelled (3.11's StreamReaderProtocol
        # logs a cancelled handler task as an error).
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._info: dict[str, PeerInfo] = {}
        self._alive: set[str] = set()  # peers handshaken and not yet reported lost
        self._closed = False
        self.close_wait = CLOSE_WAIT
        # Accepted connections' receivers (they count their frames); the counts of
        # those that ended:
        self._receivers: dict[Conn, FrameReceiver] = {}
        self._frames_read = 0
        self._superseded_frames = 0  # dropped: left on a connection its peer replaced
        self._bytes_read = 0
        self._errors = 0  # connections refused or closed for cause

    @property
    def address(self) -> str:
        if self._address is None:
            raise RuntimeError("the transport is not started: its address is not known yet")
        return self._address

    @property
    def schema(self) -> bytes | str:
        """The fingerprints this node sends in its handshakes (the kernel sets them
        at start, once its message types are registered)."""
        return self._schema

    @schema.setter
    def schema(self, value: bytes | str) -> None:
        if not isinstance(value, bytes | str):
            raise ConfigError(f"schema must be bytes or str, got {type(value).__qualname__}")
        self._schema = value

    def peer_info(self, peer: str) -> PeerInfo | None:
        """What ``peer`` (a listening address) said in its latest handshake, if any."""
        return self._info.get(peer)

    def stats(self) -> dict[str, int]:
        """Counters: ``writes`` (socket writes of frames), ``frames_written``,
        ``bytes_written`` and ``frames_read``, ``bytes_read`` (data frames, with their
        length prefixes), ``errors`` (connections refused at accept or in the handshake
        or closed for a bad frame or silence, and frame batches dropped when a peer was
        given up), ``superseded`` (frames dropped because their peer had connected again:
        left on its previous connection), ``connections`` (open, either direction),
        ``tasks`` (running)."""
        sender = self._sender
        receivers = self._receivers.values()
        return {
            "writes": sender.writes if sender else 0,
            "frames_written": sender.frames_written if sender else 0,
            "bytes_written": sender.bytes_written if sender else 0,
            "frames_read": self._frames_read + sum(r.frames for r in receivers),
            "bytes_read": self._bytes_read + sum(r.bytes for r in receivers),
            "errors": self._errors + (sender.errors if sender else 0),
            "superseded": self._superseded_frames + sum(r.dropped for r in receivers),
            "connections": len(self._conns),
            "tasks": len(self._tasks) + len(self._handlers),
        }

    async def start(self, on_frame: FrameCallback, on_peer_lost: PeerLostCallback) -> None:
        if self._server is not None or self._closed:
            raise RuntimeError(f"{self!r} was already started")
        self._on_frame = on_frame
        self._on_peer_lost = on_peer_lost
        self._sender = Sender(
            send_queue=self.send_queue,
            connect=self._connect,
            conns=self._conns,
            spawn=self._spawn,
            handshaken=self._handshaken,
            lost=self._lost,
            reconnect_attempts=self._attempts,
            backoff=self._backoff,
        )
        try:
            self._server = await asyncio.start_server(
                self._serve,
                self._host,
                self._port,
                ssl=self._ssl_server,
                ssl_handshake_timeout=self._handshake_timeout if self._ssl_server else None,
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.url}: {exc}") from exc
        port = self._server.sockets[0].getsockname()[1]
        self._address = self._advertise or _format(self._host, port)
        if self._heartbeat is not None:
            self._spawn(self._beat(self._heartbeat))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- sending -----------------------------------------------------------------

    async def send(self, peer: str, frame: bytes, *, wait: bool = True) -> None:
        """Queue ``frame`` for ``peer`` (the first send to a peer waits for its
        connection, see the module docstring).

        Raises:
            SendQueueFull: the queue is full and ``wait`` is False.
            FrameTooLarge: ``len(frame) > max_frame_size``.
            PeerUnreachable: ``peer`` is not ``tcp://host:port``, or its connection
                cannot be opened (or was given up while this waited for room).
            TransportClosed: the transport is closed (or closes while this waits).
        """
        self.check_frame(frame)
        if self._closed:
            raise TransportClosed(f"{self!r} is closed: cannot send to {peer!r}")
        if self._sender is None:
            raise RuntimeError(f"{self!r} is not started")
        await self._sender.send(peer, frame, wait)

    def send_now(self, peer: str, frame: bytes) -> bool:
        """See ``Transport.send_now``: a connected peer with room takes it at once."""
        if self._closed or self._sender is None:
            return False
        self.check_frame(frame)
        return self._sender.send_now(peer, frame)

    async def _connect(
        self, address: str, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, PeerInfo]:
        """Connect, TLS and handshake to the peer at ``address``.

        Raises:
            PeerUnreachable: any of them failed or timed out.
        """
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl_client,
                    server_hostname=host if self._ssl_client else None,
                )
                info = await connect(
                    reader,
                    writer,
                    address=self.address,
                    expected=address,
                    secret=self._secret,
                    schema=self._schema,
                )
        except OSError as exc:  # refused, reset, TLS, handshake, timeout
            if writer is not None:
                writer.transport.abort()
            raise PeerUnreachable(f"cannot reach {address}: {exc}") from exc
        except BaseException:
            if writer is not None:
                writer.transport.abort()
            raise
        return reader, writer, info

    # -- receiving ---------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One accepted connection: handshake within the timeout, then frames."""
        task = asyncio.current_task()
        assert task is not None
        if self._closed:
            writer.transport.abort()
            return
        if self._accepted >= self._max_connections:
            self._errors += 1
            log.warning(
                "refused a connection from %s: %s accepted connections are open (max_connections)",
                writer.get_extra_info("peername"),
                self._accepted,
            )
            writer.transport.abort()
            return
        if self._handshaking >= self._max_handshakes:
            self._errors += 1
            log.warning(
                "refused a connection from %s: %s others are in their handshake",
                writer.get_extra_info("peername"),
                self._handshaking,
            )
            writer.transport.abort()
            return
        self._handlers[task] = writer
        conn: Conn | None = None
        try:
            self._handshaking += 1
            try:
                async with asyncio.timeout(self._handshake_timeout):
                    info = await accept(
                        reader,
                        writer,
                        address=self.address,
                        secret=self._secret,
                        schema=self._schema,
                    )
            except OSError as exc:  # handshake refused, timed out, TLS, reset
                self._errors += 1
                log.warning(
                    "refused a connection from %s: %s", writer.get_extra_info("peername"), exc
                )
                return
            finally:
                self._handshaking -= 1
            conn = Conn(info.address, writer, asyncio.get_running_loop().time())
            self._supersede(info.address, conn)
            self._conns.add(conn)
            self._accepted += 1
            self._handshaken(info.address, info)
            await self._receive(conn, writer)
        finally:
            if conn is not None:
                self._conns.discard(conn)
                self._accepted -= 1
                if self._inbound.get(conn.peer) is conn:
                    del self._inbound[conn.peer]
            writer.transport.abort()
            self._handlers.pop(task, None)

    def _supersede(self, peer: str, conn: Conn) -> None:
        """``conn`` is ``peer``'s connection from now on; an older one still open is
        closed and what it still holds (frames read and not yet handed over, or waiting
        behind a pause) is dropped: handed over after the new connection's frames, it
        would break the peer's order. The peer connected again because it saw the old
        one break; delivery is at most once, and kerna's delivery numbers count what
        was dropped as a gap."""
        old = self._inbound.get(peer)
        self._inbound[peer] = conn
        if old is not None:
            old.superseded = True
            receiver = self._receivers.get(old)
            if receiver is not None:
                receiver.supersede()
            log.info("%s connected again: its previous connection is closed", peer)
            old.writer.transport.abort()

    async def _receive(self, conn: Conn, writer: asyncio.StreamWriter) -> None:
        """Hand ``conn``'s frames to ``on_frame`` until it closes.

        Called as soon as the handshake's last message is written, with no suspension
        in between: the peer sends frames only once it has that message, so no frame
        can be in the stream's buffer when its protocol is swapped for a
        ``FrameReceiver`` (which hands frames over in the read's own callback)."""
        on_frame = self._on_frame
        assert on_frame is not None
        loop = asyncio.get_running_loop()
        peer = conn.peer

        def alive() -> None:
            conn.last_rx = loop.time()

        def paused(now: bool) -> None:
            conn.paused = now  # not silent while paused: we stopped reading it
            if not now:
                conn.last_rx = loop.time()

        transport = writer.transport
        receiver = FrameReceiver(
            cast(asyncio.Transport, transport), self.max_frame_size, peer, on_frame, alive, paused
        )
        self._receivers[conn] = receiver
        transport.set_protocol(receiver)
        try:
            error = await receiver.ended
        finally:
            del self._receivers[conn]
            self._frames_read += receiver.frames
            self._bytes_read += receiver.bytes
            self._superseded_frames += receiver.dropped
        if conn.superseded:
            return  # the peer is on its newer connection: not lost
        if isinstance(error, FrameTooLarge | ProtocolError):
            self._errors += 1
            log.warning("closing the connection from %s: %s", peer, error)
        self._lost(peer, conn.error or error)

    # -- liveness ----------------------------------------------------------------

    def _handshaken(self, peer: str, info: PeerInfo) -> None:
        self._info[peer] = info
        self._alive.add(peer)

    def _lost(self, peer: str, error: BaseException | None) -> None:
        """Report ``peer`` lost once per handshake (its two connections break together)."""
        if peer not in self._alive or self._closed:
            return
        self._alive.discard(peer)
        callback = self._on_peer_lost
        assert callback is not None
        try:
            callback(peer, error)
        except Exception:
            log.exception("on_peer_lost raised for %s", peer)

    async def _beat(self, interval: float) -> None:
        """Ping idle connections; close those silent past ``interval * misses``."""
        loop = asyncio.get_running_loop()
        period = interval / 2
        silence = interval * self._misses
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for conn in list(self._conns):
                if now - conn.last_rx > silence and not conn.paused:
                    conn.error = PeerUnreachable(
                        f"{conn.peer} sent nothing for {now - conn.last_rx:.1f}s "
                        f"(heartbeat {interval}s x {self._misses})"
                    )
                    self._errors += 1
                    log.warning("%s", conn.error)
                    self._conns.discard(conn)
                    conn.writer.transport.abort()
                elif now - conn.last_tx >= period:
                    conn.writer.write(PING_BYTES)
                    conn.last_tx = now

    # -- closing -----------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop listening, send connected peers what is queued for them, fail the
        rest (``TransportClosed``), end every task of this transport; idempotent.

        A peer reads the last frames this node sent it before it sees any of its
        connections to this node end: each outbound connection gets what is still
        queued and then its end of stream (``Sender.close``), and the peer closes its
        side once it has read up to there; only then (``close_wait`` at most) are the
        other connections closed. Frames and their end travel on one connection, so
        they cannot be overtaken; a connection the peer is paused on (it stopped
        reading) is closed at ``close_wait`` and what it still holds is lost."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        if self._sender is not None:
            ending = self._sender.close(TransportClosed(f"{self!r} was closed"))
            if ending:
                closed = [asyncio.ensure_future(conn.writer.wait_closed()) for conn in ending]
                ended, late = await asyncio.wait(closed, timeout=self.close_wait)
                for wait in late:
                    wait.cancel()
                for wait in ended:  # a peer that reset it instead: it is gone all the same
                    wait.exception()
                self._conns.update(ending)  # closed below, like the rest
        for conn in list(self._conns):
            conn.writer.transport.abort()
        self._conns.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        handlers = list(self._handlers.items())
        for _, writer in handlers:
            writer.transport.abort()  # their reads fail: the handlers end on their own
        if handlers:
            _, late = await asyncio.wait([task for task, _ in handlers], timeout=5.0)
            for task in late:  # not expected: a handler that did not see its abort
                log.warning("cancelling a connection handler that outlived its connection")
                task.cancel()
            tasks += late
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
