"""The Transport seam: moves opaque frames (bytes) between node addresses.

A transport never imports the kernel and never looks inside a frame: the kernel
encodes envelopes into frames (``kerna._wire``) and decodes the frames a transport
hands it. httpx's one-method transport is the model: a narrow base class, an in-memory
implementation (``inproc://``) and a conformance suite shipped in ``kerna.testing``
that every implementation, built-in or third-party, passes.

The contract, which the conformance suite checks:

- ``await transport.start(on_frame, on_peer_lost)`` binds the listen URL given to the
  constructor; ``transport.address`` is then the address peers send to (the bound port
  replaces a port 0). ``on_frame(peer, frame)`` is called, on the event loop, once per
  received frame, in the order the peer sent them; ``peer`` is the sender's own
  listening address, so a reply can be sent back to it. ``address`` stays readable
  after ``aclose``: a transport started on it again takes the same address.
  ``on_peer_lost(peer, error)`` is called when a peer this transport talked to is found
  gone (closed, reset, silent past the heartbeat interval); the next send to it
  reconnects.
- Receive-side flow control: ``on_frame`` returns None, or an awaitable (a future) when
  the receiver cannot take more from that peer for now (its target's mailbox is full).
  A transport with ``pauses = True`` then hands that peer no further frame until the
  awaitable completes (whatever its outcome), so the peer's frames back up into its own
  send queue and its senders wait: backpressure across nodes instead of an unbounded
  pile of parked deliveries. A paused peer is not silent (heartbeats do not close it).
  A transport that cannot pause one peer alone (one subscription for all, as nats) has
  ``pauses = False`` and ignores the awaitable: the receiver then bounds what it parks.
- ``await transport.send(peer, frame, wait=True)`` queues ``frame`` for ``peer``.
  Frames to one peer arrive in the order sent. Each peer has a bounded send queue of
  ``send_queue`` frames: when it is full, ``wait=True`` waits for room and
  ``wait=False`` raises ``SendQueueFull`` at once. Never unbounded: frames are taken
  off the queue as the peer takes them (a peer that stops reading fills it), and a
  ``send`` with ``wait=False`` to a connected peer queues or raises without yielding to
  the event loop.
- A frame over ``max_frame_size`` is refused by the sender (``FrameTooLarge``) and, if a
  peer sends one anyway, dropped by the receiver before it allocates it (the receiver
  closes that peer's connection and reports the peer lost to its own ``on_peer_lost``).
- ``await transport.aclose()`` stops listening, fails the senders still waiting for
  room (``TransportClosed``), and leaves no task behind; idempotent. Frames already
  queued are sent to the peers still connected first (tcp, nats: a stopping kernel's
  last error replies arrive) or dropped (inproc); bounded either way.
- What a callback raises is logged, never kills the transport.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import ClassVar, NamedTuple

from kerna._errors import ConfigError, PeerUnreachable, TransportError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_SEND_QUEUE",
    "FrameCallback",
    "FrameTooLarge",
    "PeerInfo",
    "PeerLostCallback",
    "PeerUnreachable",
    "SendQueueFull",
    "Transport",
    "TransportClosed",
]

DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024  # large enough for LLM payloads
DEFAULT_SEND_QUEUE = 1024  # frames per peer

FrameCallback = Callable[[str, bytes], Awaitable[object] | None]
"""``on_frame(peer, frame)``: ``peer`` is the sender's listening address; an awaitable
returned means "no more from this peer until it completes" (see ``Transport.pauses``)."""
PeerLostCallback = Callable[[str, BaseException | None], None]
"""``on_peer_lost(peer, error)``: the peer is gone (``error``: why, if known)."""


class PeerInfo(NamedTuple):
    """What a peer said about itself when this transport met it (the tcp handshake,
    a nats presence probe): a transport that learns it offers ``peer_info(address)``."""

    address: str
    """The peer's listening address (what ``on_frame`` reports as ``peer``)."""
    version: int
    """Its transport protocol version."""
    schema: bytes | str
    """Its opaque schema fingerprints (the kernel's to interpret)."""


class SendQueueFull(TransportError):
    """The peer's send queue is full and the sender chose not to wait."""


class FrameTooLarge(TransportError):
    """A frame over the transport's ``max_frame_size``."""


class TransportClosed(TransportError):
    """The transport was closed: nothing more is sent or received."""


class Transport(abc.ABC):
    """Moves frames between node addresses (see the module docstring).

    Subclasses set ``scheme`` and implement ``start``, ``send`` and ``aclose``; they are
    registered under the ``kerna.transports`` entry point group by scheme.

    Args:
        url: where to listen, e.g. ``tcp://127.0.0.1:0``; its scheme is the
            transport's.
        max_frame_size: the largest frame sent or accepted, in bytes.
        send_queue: frames queued per peer before senders wait (or fail).

    Raises:
        ConfigError: a malformed URL or a bad option.
    """

    scheme: ClassVar[str]
    pauses: ClassVar[bool] = False
    """Whether this transport stops handing a peer's frames to ``on_frame`` while the
    awaitable ``on_frame`` returned for that peer is pending (module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        send_queue: int = DEFAULT_SEND_QUEUE,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(f"transport URL must look like 'scheme://...', got {url!r}")
        for name, value in (("max_frame_size", max_frame_size), ("send_queue", send_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        self.url = url
        self.max_frame_size = max_frame_size
        self.send_queue = send_queue

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """The address peers send to (set by ``start``; a port 0 is resolved)."""

    @abc.abstractmethod
    async def start(self, on_frame: FrameCallback, on_peer_lost: PeerLostCallback) -> None:
        """Start listening; received frames go to ``on_frame``.

        Raises:
            ConfigError: the address cannot be bound (in use, not local).
            RuntimeError: already started.
        """

    @abc.abstractmethod
    async def send(self, peer: str, frame: bytes, *, wait: bool = True) -> None:
        """Queue ``frame`` for ``peer``, in order after the frames sent to it before.

        Returns once the frame is queued (not when it arrives).

        Raises:
            SendQueueFull: the queue is full and ``wait`` is False.
            FrameTooLarge: ``len(frame) > max_frame_size``.
            PeerUnreachable: ``peer`` is not a valid address of this transport, or it
                cannot be reached.
            TransportClosed: the transport is closed (or closes while this waits).
        """

    def send_now(self, peer: str, frame: bytes) -> bool:
        """Queue ``frame`` for ``peer`` at once if that needs no waiting (a connected
        peer with room in its queue and no sender waiting for room): True; else False,
        and the caller uses ``send``. The default checks the frame and says False; a
        transport whose fast path needs no ``await`` overrides it (it saves the caller
        a task per frame).

        Raises:
            TypeError, FrameTooLarge: as ``send``.
        """
        self.check_frame(frame)
        return False

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop listening, fail the senders waiting for room (``TransportClosed``),
        end every task of this transport; idempotent (queued frames: module
        docstring)."""

    def check_frame(self, frame: bytes) -> None:
        """Refuse a frame the transport must not send.

        Raises:
            TypeError: not bytes-like.
            FrameTooLarge: over ``max_frame_size``.
        """
        if type(frame) is not bytes and not isinstance(frame, bytes | bytearray | memoryview):
            raise TypeError(f"a frame is bytes, got {type(frame).__qualname__}")
        if len(frame) > self.max_frame_size:
            raise FrameTooLarge(
                f"frame of {len(frame)} bytes is over the limit of {self.max_frame_size}"
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
