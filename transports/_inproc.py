"""``inproc://name``: transports in one process, on one event loop, find each other by name.

For tests and examples that run several kernels in one process. Same contract as the
network transports (ordered per peer pair, a bounded per-peer send queue, frames no
larger than ``max_frame_size``, peer loss reported) at the cost of a deque append and
one ``loop.call_soon`` per batch: the frames queued in one loop pass are delivered in
one callback, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import weakref
from collections import deque
from dataclasses import dataclass, field

from kerna._errors import ConfigError

from ._base import (
    FrameCallback,
    FrameTooLarge,
    PeerLostCallback,
    PeerUnreachable,
    SendQueueFull,
    Transport,
    TransportClosed,
)

__all__ = ["InprocTransport"]

log = logging.getLogger("kerna.transports.inproc")

_NAME = re.compile(r"[A-Za-z0-9._~-]+")
_unnamed = itertools.count(1)


@dataclass(eq=False)
class _Endpoint:
    """A started transport as the registry of its event loop knows it."""

    address: str
    max_frame_size: int
    on_frame: FrameCallback
    on_peer_lost: PeerLostCallback
    links: dict[str, _Link] = field(default_factory=dict)  # outgoing, by peer address
    heard_from: set[str] = field(default_factory=set)

    def lost(self, peer: str, error: BaseException | None) -> None:
        try:
            self.on_peer_lost(peer, error)
        except Exception:
            log.exception("on_peer_lost(%r) of %s raised", peer, self.address)


@dataclass(eq=False)
class _Link:
    """The frames ``sender`` queued for ``receiver`` and not yet delivered."""

    sender: _Endpoint
    receiver: _Endpoint
    frames: deque[bytes] = field(default_factory=deque)
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    scheduled: bool = False
    error: BaseException | None = None  # set when the link is broken: senders get it

    def deliver(self) -> None:
        """Hands the queued frames to the receiver, in order (a ``call_soon`` callback)."""
        self.scheduled = False
        if self.error is not None:
            return
        sender, receiver = self.sender.address, self.receiver
        while self.frames:
            frame = self.frames.popleft()
            if len(frame) > receiver.max_frame_size:
                # What a network peer's receiver does with an oversized length prefix:
                # drop the frame and the connection, on both ends.
                error = FrameTooLarge(
                    f"{receiver.address} dropped a frame of {len(frame)} bytes from {sender} "
                    f"(its limit is {receiver.max_frame_size})"
                )
                log.warning("%s", error)
                self.break_(error)
                receiver.lost(sender, error)
                self.sender.lost(receiver.address, error)
                return
            receiver.heard_from.add(sender)
            try:
                pause = receiver.on_frame(sender, frame)
            except Exception:
                log.exception("on_frame of %s raised on a frame from %s", receiver.address, sender)
                continue
            if pause is not None:  # the receiver takes no more from us until it is done
                self.scheduled = True  # senders must not schedule a delivery meanwhile
                asyncio.ensure_future(pause).add_done_callback(self._resume)
                break
        self.wake()

    def _resume(self, _: object) -> None:
        asyncio.get_running_loop().call_soon(self.deliver)

    def wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def break_(self, error: BaseException) -> None:
        """Drops the queued frames; waiting senders get ``error``."""
        self.error = error
        self.frames.clear()
        if self.sender.links.get(self.receiver.address) is self:
            del self.sender.links[self.receiver.address]
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)


# One registry per event loop: an inproc address means nothing to another loop.
_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Endpoint]] = (
    weakref.WeakKeyDictionary()
)


def _registry() -> dict[str, _Endpoint]:
    return _registries.setdefault(asyncio.get_running_loop(), {})


class InprocTransport(Transport):
    """``inproc://name``: a transport to the others of this process's event loop.

    ``name`` is letters, digits and ``._~-``; ``inproc://`` alone picks a fresh name at
    ``start`` (like a port 0). Frames are delivered by reference (bytes are immutable;
    a ``bytearray`` or ``memoryview`` is copied when sent).

    Args:
        url: ``inproc://name``.
        max_frame_size: the largest frame sent or accepted, in bytes.
        send_queue: frames queued per peer before senders wait (or fail).

    Raises:
        ConfigError: a malformed URL or a bad option.
    """

    scheme = "inproc"
    pauses = True

    def __init__(self, url: str, **options: int) -> None:
        super().__init__(url, **options)
        name = _name(url)
        if name is None:
            raise ConfigError(
                f"inproc URL must be 'inproc://name' (name: {_NAME.pattern}): {url!r}"
            )
        self._name = name
        self._endpoint: _Endpoint | None = None
        self._address: str | None = None  # kept after aclose: where to restart
        self._closed = False

    @property
    def address(self) -> str:
        """``inproc://name`` (set by ``start``; still readable after ``aclose``).

        Raises:
            RuntimeError: never started.
        """
        if self._address is None:
            raise RuntimeError(f"{self!r} is not started")
        return self._address

    async def start(self, on_frame: FrameCallback, on_peer_lost: PeerLostCallback) -> None:
        """Registers the name on this event loop.

        Raises:
            ConfigError: another started transport of this loop has the name.
            RuntimeError: already started (or closed).
        """
        if self._endpoint is not None or self._closed:
            raise RuntimeError(f"{self!r} was already started")
        registry = _registry()
        name = self._name or f"unnamed-{next(_unnamed)}"
        address = f"inproc://{name}"
        if address in registry:
            raise ConfigError(f"inproc address {address!r} is in use")
        self._address = address
        self._endpoint = _Endpoint(address, self.max_frame_size, on_frame, on_peer_lost)
        registry[address] = self._endpoint

    async def send(self, peer: str, frame: bytes, *, wait: bool = True) -> None:
        """Queues ``frame`` for ``peer``; see ``Transport.send``.

        Raises:
            SendQueueFull: the queue is full and ``wait`` is False.
            FrameTooLarge: ``len(frame) > max_frame_size``.
            PeerUnreachable: ``peer`` is not an inproc address, nothing is started on
                it, or it closed while this waited.
            TransportClosed: this transport is closed (or closes while this waits).
            RuntimeError: not started.
        """
        me = self._endpoint
        if me is None:
            if self._closed:
                raise TransportClosed(f"{self!r} is closed")
            raise RuntimeError(f"{self!r} is not started")
        self.check_frame(frame)
        link = me.links.get(peer)
        if link is None:
            link = self._link(me, peer)
        while len(link.frames) >= self.send_queue:
            if not wait:
                raise SendQueueFull(f"send queue to {peer} is full ({self.send_queue} frames)")
            waiter = asyncio.get_running_loop().create_future()
            link.waiters.append(waiter)
            await waiter  # raises what broke the link
        if link.error is not None:
            raise link.error
        link.frames.append(frame if type(frame) is bytes else bytes(frame))
        if not link.scheduled:
            link.scheduled = True
            asyncio.get_running_loop().call_soon(link.deliver)

    def send_now(self, peer: str, frame: bytes) -> bool:
        """See ``Transport.send_now``: a linked peer with room takes it at once."""
        me = self._endpoint
        if me is None:
            return False
        link = me.links.get(peer)
        if link is None or link.error is not None or link.waiters:
            return False
        if len(link.frames) >= self.send_queue:
            return False
        self.check_frame(frame)
        link.frames.append(frame if type(frame) is bytes else bytes(frame))
        if not link.scheduled:
            link.scheduled = True
            asyncio.get_running_loop().call_soon(link.deliver)
        return True

    def _link(self, me: _Endpoint, peer: str) -> _Link:
        if _name(peer) is None:
            raise PeerUnreachable(f"{peer!r} is not an inproc address ('inproc://name')")
        receiver = _registry().get(peer)
        if receiver is None:
            raise PeerUnreachable(f"no inproc transport is started on {peer!r}")
        link = me.links[peer] = _Link(me, receiver)
        return link

    async def aclose(self) -> None:
        """Unregisters; queued frames are dropped, waiting senders get
        ``TransportClosed``, and the peers it talked to are told it is lost."""
        if self._closed:
            return
        self._closed = True
        me, self._endpoint = self._endpoint, None
        if me is None:
            return
        registry = _registry()
        if registry.get(me.address) is me:
            del registry[me.address]
        closed = TransportClosed(f"{self!r} is closed")
        for link in list(me.links.values()):
            link.break_(closed)
        gone = PeerUnreachable(f"{me.address} closed")
        for other in list(registry.values()):
            inbound = other.links.get(me.address)
            talked = inbound is not None or me.address in other.heard_from
            other.heard_from.discard(me.address)
            if inbound is not None:
                inbound.break_(gone)
            if talked:
                asyncio.get_running_loop().call_soon(_report_lost, other, me.address, gone)


def _report_lost(endpoint: _Endpoint, peer: str, error: BaseException) -> None:
    if _registry().get(endpoint.address) is endpoint:  # not closed meanwhile
        endpoint.lost(peer, error)


def _name(url: str) -> str | None:
    """The name of an ``inproc://name`` URL ('' for ``inproc://``), None if it is not one."""
    if not isinstance(url, str) or not url.startswith("inproc://"):
        return None
    name = url[len("inproc://") :]
    return name if name == "" or _NAME.fullmatch(name) else None
