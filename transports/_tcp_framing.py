"""Frames on a TCP stream: a 4-byte big-endian length, then that many bytes.

A length with the top bit set is a control frame with no body (today only the
heartbeat ``PING``); any other control value is a protocol error. So a data frame is
at most 2**31 - 1 bytes, and a length prefix is checked against the receiver's limit
before a single byte of the body is read or allocated.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from ._base import FrameTooLarge

__all__ = [
    "CONTROL",
    "MAX_WIRE_FRAME",
    "PING",
    "PING_BYTES",
    "ProtocolError",
    "header",
    "read_frame",
    "unpack_header",
    "unpack_length",
]

_HEADER = struct.Struct(">I")
unpack_header = _HEADER.unpack_from
"""``unpack_header(data, pos)[0]`` is the length prefix at ``pos`` (``unpack_length``
without its call, for the per-frame loop)."""


def unpack_length(data: bytes | bytearray, pos: int) -> int:
    """The length prefix at ``data[pos:pos + 4]``."""
    length: int = unpack_header(data, pos)[0]
    return length


CONTROL = 0x8000_0000
PING = CONTROL  # "I am alive": sent on an idle connection, carries no body
MAX_WIRE_FRAME = CONTROL - 1  # the largest data frame the 4-byte prefix can carry
PING_BYTES = _HEADER.pack(PING)
header = _HEADER.pack


class ProtocolError(ConnectionError):
    """The peer sent bytes that are not a frame (an unknown control value)."""


CHUNK = 256 * 1024  # a body larger than this is read in chunks, each a sign of life


async def read_frame(
    reader: asyncio.StreamReader, limit: int, alive: Callable[[], None] | None = None
) -> bytes | None:
    """The next data frame, or None for a heartbeat.

    ``alive()`` is called for each chunk of a large body as it arrives, so that a frame
    that takes longer than the heartbeat bound to arrive does not make its sender look
    silent.

    Raises:
        FrameTooLarge: the length prefix is over ``limit`` (nothing was allocated).
        ProtocolError: an unknown control frame.
        asyncio.IncompleteReadError: the stream ended inside a frame.
    """
    (length,) = _HEADER.unpack(await reader.readexactly(4))
    if length & CONTROL:
        if length == PING:
            return None
        raise ProtocolError(f"unknown control frame 0x{length:08x}")
    if length > limit:
        raise FrameTooLarge(f"peer announced a frame of {length} bytes, over the limit of {limit}")
    if length <= CHUNK or alive is None:
        return await reader.readexactly(length) if length else b""
    return await _rest(reader, b"", length, alive)


YIELD_EVERY = 32
"""Frames handed over between two turns given to the loop within one read: with many
requests in flight, the first ones get handled (and their replies written) while the
rest of the read is split, instead of after all of it (a pipeline, not a batch)."""


async def _rest(
    reader: asyncio.StreamReader, start: bytes, length: int, alive: Callable[[], None]
) -> bytes:
    """The body of a ``length``-byte frame whose first bytes are ``start``: the rest
    read in chunks of at most ``CHUNK``, ``alive()`` after each, joined once."""
    chunks = [start] if start else []
    remaining = length - len(start)
    while remaining:
        chunk = await reader.read(min(remaining, CHUNK))
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(chunks), length)
        chunks.append(chunk)
        remaining -= len(chunk)
        alive()
    return b"".join(chunks)
