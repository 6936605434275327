"""kerna.transports: pluggable transports that carry frames between nodes.

``Transport`` is the seam (see ``kerna.transports._base`` for the contract);
``open_transport(url)`` picks one by URL scheme through the ``kerna.transports`` entry
point group. Built-ins: ``inproc://`` (several kernels in one process), ``tcp://`` and
``nats://``. Importing this package imports no concrete transport and not the kernel.
"""

from ._base import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_SEND_QUEUE,
    FrameCallback,
    FrameTooLarge,
    PeerInfo,
    PeerLostCallback,
    PeerUnreachable,
    SendQueueFull,
    Transport,
    TransportClosed,
)
from ._registry import open_transport, schemes, transport_class

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
    "open_transport",
    "schemes",
    "transport_class",
]
