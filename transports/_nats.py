"""``nats://host:port/node-name``: frames between nodes through a NATS server (nats-py).

Each node listens on one subject, ``{subject_prefix}.node.{node-name}`` (prefix
``kerna`` unless set; every node of a cluster uses the same prefix). The listen URL
names the server and the node: ``nats://127.0.0.1:4222/node-a`` (or ``name="node-a"``;
without a name a unique one is made up, like a port 0). ``transport.address`` is
``nats://<server>/<node-name>``, what other ``NatsTransport``s send to: only the name
picks the subject, so peers connected to other servers of the same NATS cluster reach
it too. Credentials never appear in the address.

Each frame is one NATS message that names the sender's address (``on_frame`` gets it):
in the message's reply subject, with no header, to a peer of protocol version 2 (this
one), or in a ``Kerna-From`` header to a version 1 peer; the presence probe and its
answer say each side's version. Both forms are read. Frames to one peer go out in order
on one connection, and NATS keeps the order of one connection's messages on a subject. A
frame to a peer that is idle (nothing queued for it, no publish to it waiting) and
present (not due for its probe, below) is published by ``send``/``send_now`` itself, in
the sender's loop pass, so a lone request or reply does not wait a task switch;
otherwise it waits in the peer's bounded queue of ``send_queue`` frames for the peer's
publishing task, which goes on in order. nats-py's flusher task writes what was
published in the next loop pass; until then those frames count against the queue, and so
does a publish that waits in nats-py (its own buffer is bounded by ``pending_size``
bytes, and a publish over it waits for the socket): a full queue waits or fails
(``SendQueueFull``) by the sender's choice. An error nats-py raises from a publish loses
the peer (below) whether the sender or the peer's task published. A version 2 peer's
data frames reach ``on_frame`` from nats-py's reader as it parses them (a loop pass
before nats-py's own subscription callbacks would see them: ``_nats_client``), unless
something waits in that subscription's queue (they queue behind it, in order); probes,
goodbyes and version 1 frames through nats-py's subscription task.

What NATS can tell about peers, and what this transport reports:

- A peer's departure is invisible on a plain subject (messages to nobody vanish). So
  presence is probed: a request on the peer's subject that its transport answers.
  The first send to a peer (and the first after it was lost) awaits a probe: nobody
  subscribed (``NoRespondersError``) or no answer within ``probe_timeout`` raises
  ``PeerNotListening`` from ``send`` (it was never reached, so it is not reported
  lost). After that a peer counts as present while it is heard from; the first frame
  sent more than ``ping_interval`` seconds after it was last found present probes it
  again (from the peer's publishing task), and a failed probe reports it lost
  (``PeerNotListening``) and drops its queued frames. A peer that vanishes without
  closing is so found within ``ping_interval + probe_timeout`` of the next frame sent
  to it; an idle peer is not watched (the cluster's membership does that).
- ``aclose`` tells every peer it sent to or heard from that it leaves (a goodbye
  message, after the frames still queued for it): they report it lost at once. Each
  loss is reported once, until the peer is heard from or found present again.
- Losing the server connection (closed, reset, or frozen: a ``ping_interval`` of 2 s
  with ``max_outstanding_pings`` 2 notices a silent server within about
  ``ping_interval * (max_outstanding_pings + 1)``, where nats-py's 120 s default takes
  minutes) reports every known peer lost (``NatsServerUnavailable``). nats-py keeps
  reconnecting (``reconnect_time_wait`` apart); frames queued meanwhile go to its
  bounded buffer (``pending_size``), and a full one fails the peer (reported lost).
  A send to a peer not present since needs the server: it raises
  ``NatsServerUnavailable`` until nats-py has reconnected.
- A receiver slower than its senders: a version 2 peer's data frames are handed to
  ``on_frame`` as they are read (the kernel's own bounds apply to them), or queue behind
  what waits in nats-py's subscription queue (below) as its frames do; a receiver whose
  loop is stuck lets nats-server buffer them, up to its ``max_pending``, and then be
  disconnected (reported as above). The frames that go through nats-py's subscription
  (version 1 frames, probes, goodbyes) wait in its queue of ``receive_queue``, which
  drops the rest, reporting them without their sender; every peer heard from is then
  reported lost (``NatsFramesDropped``), never a silent gap.
- A node name is one subscriber: ``start`` refuses (``ConfigError``) a name a live
  node already answers on.

Frame size: NATS refuses messages over the server's ``max_payload`` (1 MiB by
default), headers included. ``start`` lowers ``max_frame_size`` to what the connected
server accepts after the header, so an oversized frame is refused by the sender with
``FrameTooLarge``. LLM-sized payloads need ``max_payload`` raised in nats-server's
configuration (e.g. ``max_payload: 8MB``; at most ``max_pending``, 64 MB by default).

TLS and credentials pass through to nats-py: ``tls=`` an ``ssl.SSLContext``
(``tls_hostname=``), ``user=``/``password=`` (or in the URL's userinfo), ``token=``,
``creds=`` a ``.creds`` file.

The code, in layers: ``_nats_config`` checks the URL and options, ``_nats_peer`` keeps
the peers and their presence (probe, loss, goodbye), ``_nats_send`` sends (each peer's
queue and task), ``_nats_client`` is the nats-py client that reads and writes directly,
and this module connects, receives, answers probes and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from kerna._errors import ConfigError, TransportError

from ._base import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_SEND_QUEUE,
    FrameCallback,
    FrameTooLarge,
    PeerInfo,
    PeerLostCallback,
    TransportClosed,
)
from ._nats_client import ReaderClient
from ._nats_config import nats_config
from ._nats_peer import (
    BYE_HEADER,
    FROM_HEADER,
    NEVER,
    PROBE_HEADER,
    PROTOCOL_VERSION,
    VERSION_HEADER,
    NatsServerUnavailable,
    PeerNotListening,
    protocol_version,
)
from ._nats_send import NatsSending

__all__ = ["NatsFramesDropped", "NatsServerUnavailable", "NatsTransport", "PeerNotListening"]

log = logging.getLogger("kerna.transports.nats")


class NatsFramesDropped(TransportError):
    """nats-py dropped frames for this node (a slow consumer: more than
    ``receive_queue`` frames waited for ``on_frame``); which peer sent them is unknown."""


class NatsTransport(NatsSending):
    """Frames between nodes over NATS subjects (see the module docstring).

    Args:
        url: ``nats://[user:password@]host[:port][/node-name]``.
        max_frame_size: the largest frame, lowered by ``start`` to the server's limit.
        send_queue: frames queued per peer before senders wait (or fail).
        name: the node's name, if the URL has none (a unique one otherwise).
        subject_prefix: the subjects' prefix, the same on every node of a cluster.
        ping_interval: seconds between client pings to the server, and between
            presence probes of a peer that is being sent to.
        max_outstanding_pings: unanswered pings before the server is declared gone.
        connect_timeout: bound on ``start``'s connect (and on each reconnect attempt).
        reconnect_time_wait: seconds between reconnect attempts.
        probe_timeout: how long a peer's presence probe waits for its answer.
        schema: opaque schema fingerprints, sent with each presence probe and each
            answer to one (the kernel sets them): ``peer_info(address)`` has a peer's,
            as tcp's handshake gives them.
        tls: an ``ssl.SSLContext`` to connect with TLS.
        tls_hostname: the server name TLS checks, if not the URL's host.
        user: user name (with ``password``).
        password: password.
        token: an authentication token.
        creds: the path of a NATS ``.creds`` file (JWT and nkey).
        pending_size: bytes nats-py buffers (while reconnecting, or ahead of the socket).
        receive_queue: frames nats-py holds for its subscription task (version 1
            frames, probes, goodbyes) before it drops them (every peer heard from is
            then reported lost with ``NatsFramesDropped``).
        sender_header: name the sender in a ``Kerna-From`` header on every frame (as
            protocol version 1 does), not in the reply subject: for a NATS deployment
            that rewrites reply subjects (cross-account service imports do); it costs
            about 3 µs a frame.

    Raises:
        ConfigError: a malformed URL or a bad option.
    """

    scheme = "nats"

    def __init__(
        self,
        url: str,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        send_queue: int = DEFAULT_SEND_QUEUE,
        name: str | None = None,
        subject_prefix: str = "kerna",
        ping_interval: float = 2.0,
        max_outstanding_pings: int = 2,
        connect_timeout: float = 2.0,
        reconnect_time_wait: float = 0.5,
        probe_timeout: float = 2.0,
        schema: bytes | str = b"",
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        creds: str | None = None,
        pending_size: int = 2 * 1024 * 1024,
        receive_queue: int = 512 * 1024,
        sender_header: bool = False,
    ) -> None:
        super().__init__(url, max_frame_size=max_frame_size, send_queue=send_queue)
        config = nats_config(
            url,
            name=name,
            subject_prefix=subject_prefix,
            ping_interval=ping_interval,
            max_outstanding_pings=max_outstanding_pings,
            connect_timeout=connect_timeout,
            reconnect_time_wait=reconnect_time_wait,
            probe_timeout=probe_timeout,
            schema=schema,
            tls=tls,
            tls_hostname=tls_hostname,
            user=user,
            password=password,
            token=token,
            creds=creds,
            pending_size=pending_size,
            receive_queue=receive_queue,
            sender_header=sender_header,
        )
        node = config.node_name
        self.server = config.server
        self.node_name = node
        self.subject_prefix = config.subject_prefix
        self.subject = self._subject(node)
        self._ping_interval = config.ping_interval
        self._connect_timeout = config.connect_timeout
        self._probe_timeout = config.probe_timeout
        self._options = config.client_options
        self._receive_queue = config.receive_queue
        self._sender_header = config.sender_header
        self._address = f"nats://{self.server}/{node}"
        self._from = {FROM_HEADER: self._address}
        self._probe_headers = {
            PROBE_HEADER: "1",
            FROM_HEADER: self._address,
            VERSION_HEADER: str(PROTOCOL_VERSION),
        }
        self._answer_headers = {VERSION_HEADER: str(PROTOCOL_VERSION)}
        self._nc = None
        self._closed = False
        self._started = False  # connected and subscribed
        self._on_frame: FrameCallback | None = None
        self._on_peer_lost = None
        self._peers = {}
        self._heard = set()
        self._lost = set()
        self._last_error: BaseException | None = None  # nats-py's last, for messages
        self._schema = config.schema
        self._info = {}

    @property
    def address(self) -> str:
        return self._address

    @property
    def schema(self) -> bytes | str:
        """The opaque schema fingerprints sent with presence probes and their answers
        (the kernel sets them; ``peer_info`` has a peer's)."""
        return self._schema

    @schema.setter
    def schema(self, value: bytes | str) -> None:
        self._schema = value.encode() if isinstance(value, str) else value

    def peer_info(self, peer: str) -> PeerInfo | None:
        """What ``peer`` sent in the latest presence probe between the two (either
        way), or None."""
        return self._info.get(peer)

    async def start(self, on_frame: FrameCallback, on_peer_lost: PeerLostCallback) -> None:
        """Connect to the server and subscribe to this node's subject.

        Raises:
            NatsServerUnavailable: the server did not accept a connection within
                ``connect_timeout``.
            ConfigError: another node already listens under this name.
            RuntimeError: already started.
            TransportClosed: closed before.
        """
        if self._closed:
            raise TransportClosed(f"{self!r} is closed")
        if self._nc is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._on_frame, self._on_peer_lost = on_frame, on_peer_lost
        nc = self._nc = ReaderClient()
        try:
            await self._connect(nc)
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            await self._close_client()
            self._nc = None
            why = self._last_error or nc.last_error or exc
            raise NatsServerUnavailable(
                f"cannot connect to nats server {self.server}: {why!r} "
                f"(connect_timeout {self._connect_timeout} s)"
            ) from exc
        # Read by nats-py when a connection fails: from now on a node keeps trying to
        # reach its server, reconnect_time_wait apart.
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        try:
            await self._refuse_a_taken_name(nc)
            await nc.subscribe(
                self.subject, cb=self._on_msg, pending_msgs_limit=self._receive_queue
            )
            # A version 2 peer's data frames come straight from the reader from now on.
            nc.direct_subject, nc.on_direct = self.subject.encode(), self._on_data
            # nats-py types the timeout as int; it is a float to asyncio.
            await nc.flush(timeout=max(1, round(self._connect_timeout)))
        except BaseException:
            await self._close_client()
            raise
        self._fit_frame_limit(nc)
        self._started = True

    async def _connect(self, nc: Client) -> None:
        """Connect within ``connect_timeout``.

        Raises:
            TimeoutError: not connected in time.
            OSError, nats.errors.Error: why the connect failed.
        """
        async with asyncio.timeout(self._connect_timeout):
            await nc.connect(
                error_cb=self._error_cb,
                disconnected_cb=self._disconnected_cb,
                reconnected_cb=self._reconnected_cb,
                closed_cb=self._closed_cb,
                **self._options,
            )

    async def _refuse_a_taken_name(self, nc: Client) -> None:
        try:
            await nc.request(self.subject, b"", self._probe_timeout, headers={PROBE_HEADER: "1"})
        except nats.errors.NoRespondersError:
            return
        except nats.errors.TimeoutError:
            return  # whoever holds it does not answer: not a live kerna node
        raise ConfigError(
            f"a node named {self.node_name!r} already listens on {self.subject!r} "
            f"(nats server {self.server})"
        )

    def _fit_frame_limit(self, nc: Client) -> None:
        # The server counts the header block too: "NATS/1.0\r\n" "K: V\r\n" "\r\n".
        overhead = 12 + sum(len(k) + len(v) + 4 for k, v in self._from.items()) + 16
        limit = nc.max_payload - overhead
        if limit < self.max_frame_size:
            log.info(
                "nats server %s accepts messages up to %s bytes (max_payload): "
                "max_frame_size lowered from %s to %s",
                self.server,
                nc.max_payload,
                self.max_frame_size,
                limit,
            )
            self.max_frame_size = limit

    # -- receiving ---------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if not headers:  # a data frame from a version 2 peer: the reply names it
            peer = msg.reply
            if peer and not peer.startswith("nats://"):
                log.warning(
                    "nats: dropped a message on %s whose reply subject %r is not a kerna "
                    "node's address (rewritten on its way? then give its sender "
                    "sender_header=True)",
                    msg.subject,
                    peer,
                )
                return
        elif PROBE_HEADER in headers:
            prober = headers.get(FROM_HEADER)
            if prober:  # a peer about to send: it tells its schema, and gets ours
                version = protocol_version(headers)
                self._info[prober] = PeerInfo(prober, version, bytes(msg.data))
            if msg.reply and self._nc is not None and not self._closed:
                await self._nc.publish(msg.reply, self._schema, headers=self._answer_headers)
            return
        else:
            peer = headers.get(FROM_HEADER, "")
            if peer and BYE_HEADER in headers:
                self._peer_left(peer, PeerNotListening(f"{peer} closed its transport"))
                return
        if not peer:
            log.warning(
                "nats: dropped a message on %s that does not name its sender (no reply "
                "subject, no %s header)",
                msg.subject,
                FROM_HEADER,
            )
            return
        self._on_data(peer, msg.data)

    def _on_data(self, peer: str, frame: bytes) -> None:
        """A data frame from ``peer``: from nats-py's reader (a version 2 peer's, see
        ``ReaderClient``) or its subscription task (the rest)."""
        self._heard.add(peer)
        self._lost.discard(peer)
        if (known := self._peers.get(peer)) is not None:
            known.checked_at = asyncio.get_running_loop().time()  # it listens: it sent
        if len(frame) > self.max_frame_size:
            error = FrameTooLarge(
                f"frame of {len(frame)} bytes from {peer} is over the limit of "
                f"{self.max_frame_size}"
            )
            log.warning("nats: %s", error)
            self._report_lost(peer, error)
            return
        assert self._on_frame is not None
        try:
            self._on_frame(peer, frame)
        except Exception:
            log.exception("nats: on_frame raised for a frame from %s", peer)

    # -- sending -----------------------------------------------------------------------

    # -- the server connection ---------------------------------------------------------

    async def _error_cb(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            # Called per dropped message, without its headers: the sender is unknown,
            # so every peer heard from may have lost a frame (reported once each).
            error = NatsFramesDropped(
                f"nats-py dropped frames for {self._address}: more than "
                f"{self._receive_queue} waited for on_frame (nats server {self.server})"
            )
            if self._heard - self._lost:
                log.warning("nats: %s", error)
            for peer in self._heard:
                self._report_lost(peer, error)
            return
        self._last_error = exc
        log.warning("nats server %s: %r", self.server, exc)

    async def _disconnected_cb(self) -> None:
        if self._closed or not self._started:
            return
        # nats-py does not pass the cause (a frozen server is a stale connection: no
        # answer to max_outstanding_pings pings); name the last error it reported.
        why = (
            f"last error {self._last_error!r}"
            if self._last_error is not None
            else f"closed, reset, or silent past {self._options['max_outstanding_pings']} "
            f"pings {self._ping_interval} s apart"
        )
        self._last_error = None
        log.warning("lost the connection to nats server %s (%s)", self.server, why)
        for peer in {*self._peers, *self._heard}:
            error = NatsServerUnavailable(
                f"lost the connection to nats server {self.server} ({why})"
            )
            if (p := self._peers.get(peer)) is not None:
                p.checked_at = NEVER
            self._report_lost(peer, error)

    async def _reconnected_cb(self) -> None:
        log.info("reconnected to nats server %s", self.server)

    async def _closed_cb(self) -> None:
        if not self._closed:
            log.warning("the connection to nats server %s is closed", self.server)

    async def aclose(self) -> None:
        """Stop listening, publish what is queued for each peer before telling it
        this node leaves (a stopping kernel's last error replies arrive before its
        goodbye; bounded, as the goodbye), fail waiting senders (``TransportClosed``),
        close the server connection and end every task; idempotent."""
        if self._closed:
            return
        await self._say_goodbye()
        self._closed = True
        tasks = []
        for p in self._peers.values():
            if p.probing is not None:
                p.probing.cancel()
                tasks.append(p.probing)
            p.queue.clear()
            p.room.set()
            for task in (p.started, p.task):
                if task is not None:
                    task.cancel()
                    tasks.append(task)
        if tasks:
            # Bounded: a cancelled publish ends at its next await.
            await asyncio.wait(tasks, timeout=self._connect_timeout)
        await self._close_client()

    async def _close_client(self) -> None:
        nc = self._nc
        # A connect that failed has closed its client already (and nats-py's close()
        # of a client that never connected waits for nothing that comes).
        if nc is None or nc.is_closed or not (nc.is_connected or nc.is_reconnecting):
            return
        # Bounded: a frozen server must not hold close; what it did not take is lost.
        with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
            async with asyncio.timeout(self._connect_timeout):
                await nc.close()
