"""A nats node's peers: what it keeps per peer (``Peer``), how it finds one present
(the presence probe, which both sides answer with their protocol version and schema
fingerprints), how it loses one (reported once), and its goodbye; the protocol's
headers.

``NatsPeers`` is the base of ``NatsTransport`` (``kerna.transports._nats``: its
docstring says what presence means to a sender); the sending side
(``kerna.transports._nats_send``) builds on it, and the transport's receiving side
answers the probes and reads the goodbyes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client

from kerna._errors import TransportError

from ._base import PeerInfo, PeerLostCallback, PeerUnreachable, Transport, TransportClosed
from ._nats_client import ReaderClient
from ._nats_config import node_subject, valid_node_name

__all__ = [
    "BYE_HEADER",
    "FROM_HEADER",
    "NEVER",
    "PROBE_HEADER",
    "PROTOCOL_VERSION",
    "VERSION_HEADER",
    "NatsPeers",
    "NatsServerUnavailable",
    "Peer",
    "PeerNotListening",
    "protocol_version",
]

log = logging.getLogger("kerna.transports.nats")

FROM_HEADER = "Kerna-From"
VERSION_HEADER = "Kerna-Version"
PROTOCOL_VERSION = 2
"""This transport's protocol version (``PeerInfo.version`` says a peer's): from 2, a data
frame names its sender in the NATS message's reply subject, not in a header (nats-py
builds and parses headers for about 3 µs a message); a peer that says no version in its
probe or its probe's answer is 1, and gets (and may send) the ``Kerna-From`` header."""
PROBE_HEADER = "Kerna-Probe"
BYE_HEADER = "Kerna-Bye"


NEVER = float("-inf")  # a peer's checked_at before it was first found listening
_NO_RESPONDERS_TRIES = 4
_NO_RESPONDERS_GAP = 0.05  # seconds


class NatsServerUnavailable(PeerUnreachable):
    """The NATS server cannot be reached, or the connection to it was lost."""


class PeerNotListening(PeerUnreachable):
    """No node listens on the peer's subject (no responders), or it did not answer."""


class Peer:
    """One peer's send side: its bounded queue, the task that publishes it, and what
    senders published themselves (``send``/``send_now`` to an idle peer)."""

    __slots__ = (
        "address",
        "busy",
        "checked_at",
        "headers",
        "probing",
        "queue",
        "ready",
        "reply",
        "room",
        "started",
        "subject",
        "taken",
        "task",
        "waiting",
    )

    def __init__(self, address: str, subject: str, headers: dict[str, str]) -> None:
        self.address = address
        self.subject = subject
        # How a frame names its sender (set by each probe, from the peer's version): a
        # header for a version 1 peer, else the reply subject (no header).
        self.headers: dict[str, str] | None = headers
        self.reply = ""
        self.queue: collections.deque[bytes] = collections.deque()  # not yet published
        self.ready = asyncio.Event()  # frames to publish
        self.room = asyncio.Event()  # the queue shrank (or the transport closed)
        self.checked_at = NEVER  # when it was last found listening
        self.probing: asyncio.Task[TransportError | None] | None = None  # first contact
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a publish waits in nats-py (it holds a place of the queue)
        self.started: asyncio.Task[None] | None = None  # the rest of a sender's publish
        self.taken = 0  # frames senders published themselves in this loop pass
        self.waiting = 0  # senders waiting for room (send_now does not overtake them)


class NatsPeers(Transport):
    """A nats transport's peers and their presence (see the module docstring); the
    state is set by ``NatsTransport.__init__``."""

    server: str
    subject_prefix: str
    _nc: ReaderClient | None
    _closed: bool
    _started: bool
    _address: str
    _from: dict[str, str]
    _probe_headers: dict[str, str]
    _probe_timeout: float
    _schema: bytes
    _sender_header: bool
    _on_peer_lost: PeerLostCallback | None
    _peers: dict[str, Peer]
    _heard: set[str]  # peers frames came from
    _lost: set[str]  # reported lost, not heard from or found since
    _info: dict[str, PeerInfo]  # what peers sent in presence probes

    def _subject(self, node: str) -> str:
        return node_subject(self.subject_prefix, node)

    def _peer_subject(self, peer: str) -> str | None:
        """The subject of a ``nats://server/node-name`` address (None if it is not one)."""
        parts = urlsplit(peer) if isinstance(peer, str) else None
        node = parts.path.strip("/") if parts is not None else ""
        if parts is None or parts.scheme != "nats" or not valid_node_name(node):
            return None
        return self._subject(node)

    async def _first_contact(self, p: Peer) -> None:
        """Probe a peer not seen listening yet (or lost since); concurrent first sends
        share one probe.

        Raises:
            PeerUnreachable: nothing listens there (not reported lost: it never was
                reached), or the server is gone.
        """
        nc = self._nc
        assert nc is not None
        if p.probing is None:
            p.probing = asyncio.get_running_loop().create_task(
                self._probe(nc, p), name=f"kerna nats probe {p.address}"
            )
        probing = p.probing
        try:
            # shield: a sender that gives up does not cancel the probe the others share
            error = await asyncio.shield(probing)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closed and probing.cancelled() and not (current and current.cancelling()):
                # aclose cancelled the probe, not this sender's caller
                raise TransportClosed(
                    f"{self!r} closed while a send to {p.address} waited"
                ) from None
            raise
        finally:
            if probing.done() and p.probing is probing:
                p.probing = None
        if self._closed:
            raise TransportClosed(f"{self!r} closed while a send to {p.address} waited")
        if error is not None:
            raise error
        p.checked_at = asyncio.get_running_loop().time()
        self._lost.discard(p.address)

    async def _probe(self, nc: Client, p: Peer) -> TransportError | None:
        """None if ``p`` listens, else why not."""
        if not nc.is_connected:
            return NatsServerUnavailable(f"not connected to nats server {self.server}")
        # "No responders" is asked again a few times, _NO_RESPONDERS_GAP apart: a node
        # that has just subscribed may not be visible yet everywhere its server (or, in
        # a NATS cluster, the other servers) route from.
        for attempt in range(_NO_RESPONDERS_TRIES):
            try:
                answer = await nc.request(
                    p.subject, self._schema, self._probe_timeout, headers=self._probe_headers
                )
            except nats.errors.NoRespondersError:
                if attempt + 1 < _NO_RESPONDERS_TRIES:
                    await asyncio.sleep(_NO_RESPONDERS_GAP)
                    continue
                return PeerNotListening(
                    f"no kerna node listens on {p.subject!r} for {p.address} "
                    f"(nats server {self.server}: no responders)"
                )
            except nats.errors.TimeoutError:
                return PeerNotListening(
                    f"{p.address} did not answer a presence probe on {p.subject!r} within "
                    f"{self._probe_timeout} s (nats server {self.server})"
                )
            except (nats.errors.Error, OSError) as exc:
                return self._server_error(exc)
            version = protocol_version(answer.headers)
            if version >= 2 and not self._sender_header:  # it reads the reply subject
                p.reply, p.headers = self._address, None
            else:
                p.reply, p.headers = "", self._from
            self._info[p.address] = PeerInfo(p.address, version, bytes(answer.data))
            return None
        return None

    def _server_error(self, exc: BaseException) -> NatsServerUnavailable:
        return NatsServerUnavailable(f"nats server {self.server}: {exc!r}")

    def _lose(self, p: Peer, error: BaseException) -> None:
        """Drop ``p``'s queued frames, probe again next time, report it lost."""
        p.queue.clear()
        p.checked_at = NEVER
        p.room.set()
        self._report_lost(p.address, error)

    def _peer_left(self, peer: str, error: TransportError) -> None:
        if (p := self._peers.get(peer)) is not None:
            self._lose(p, error)
        else:
            self._report_lost(peer, error)

    def _report_lost(self, peer: str, error: BaseException | None) -> None:
        """Tell ``on_peer_lost``, once until the peer is heard from or found again."""
        if self._closed or self._on_peer_lost is None or peer in self._lost:
            return
        self._lost.add(peer)
        try:
            self._on_peer_lost(peer, error)
        except Exception:
            log.exception("nats: on_peer_lost raised for %s", peer)

    async def _say_goodbye(self) -> None:
        """Tell every known peer this node leaves (what a plain subject cannot show),
        after the frames still queued for it; bounded, and skipped without a
        connection (the peers' probes notice then)."""
        nc = self._nc
        if nc is None or not self._started or not nc.is_connected:
            return
        bye = {FROM_HEADER: self._address, BYE_HEADER: "1"}
        try:
            async with asyncio.timeout(self._probe_timeout):
                for peer in {*self._peers, *self._heard}:
                    # Its queue first, without the probe it may be due (a peer that
                    # left misses nothing): the bye must not overtake it. A frame is
                    # popped and handed to nats-py in one step, as p's task does.
                    p = self._peers.get(peer)
                    while p is not None and p.queue:
                        await nc.publish(
                            p.subject, p.queue.popleft(), reply=p.reply, headers=p.headers
                        )
                    if (subject := self._peer_subject(peer)) is not None:
                        await nc.publish(subject, b"", headers=bye)
                await nc.flush(timeout=max(1, round(self._probe_timeout)))
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            log.info("nats: could not tell every peer %s leaves: %r", self._address, exc)


def protocol_version(headers: dict[str, str] | None) -> int:
    """The protocol version a probe or its answer says (1 if it says none, or junk)."""
    said = headers.get(VERSION_HEADER, "") if headers else ""
    return int(said) if said.isdigit() and len(said) < 6 else 1
