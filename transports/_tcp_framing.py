"""Frames on a TCP stream: a 4-byte big-endian length, then that many bytes.

A length with the top bit set is a control frame with no body (today only the
heartbeat ``PING``); any other control value is a protocol error. So a data frame is
at most 2**31 - 1 bytes, and a length prefix is checked against the receiver's limit
before a single byte of the body is read or allocated.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

from ._base import FrameTooLarge

__all__ = [
    "CONTROL",
    "MAX_WIRE_FRAME",
    "PING",
    "PING_BYTES",
    "ProtocolError",
    "header",
    "read_frame",
    "read_frames",
]

_HEADER = struct.Struct(">I")
_unpack_from = _HEADER.unpack_from
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


READ_SIZE = 64 * 1024  # what one read asks the stream for: many small frames at once
YIELD_EVERY = 32
"""Frames handed over between two turns given to the loop within one read: with many
requests in flight, the first ones get handled (and their replies written) while the
rest of the read is split, instead of after all of it (a pipeline, not a batch)."""


async def read_frames(
    reader: asyncio.StreamReader,
    limit: int,
    on_frame: Callable[[bytes], Awaitable[object] | None],
    alive: Callable[[], None],
    paused: Callable[[Awaitable[object]], Awaitable[None]],
) -> None:
    """Read the stream until it ends, handing each data frame to ``on_frame``.

    One ``read`` takes whatever has arrived (up to ``READ_SIZE``) and the frames in it
    are split out in one loop: a stream of small frames costs one read per batch, not
    two awaits per frame. ``alive()`` is called for every read (heartbeats count as
    reads). A frame whose body is larger than ``CHUNK`` is read in chunks, each a sign
    of life, and joined once: memory for a frame in progress stays within its length,
    which was checked against ``limit`` before any of it was read. ``on_frame`` must
    not raise (the caller wraps it); when it returns an awaitable, nothing more is
    handed over (or read) until ``await paused(it)`` returns. After each read the loop
    is given a turn, and within a read every ``YIELD_EVERY`` frames: the frames just
    handed over get handled before more are read (a reader that found its buffer full
    would otherwise fill mailboxes in one go).

    Raises:
        FrameTooLarge: a length prefix is over ``limit`` (nothing was allocated for it).
        ProtocolError: an unknown control frame.
        asyncio.IncompleteReadError: the stream ended inside a frame (or at its end).
    """
    pending = b""  # the start of a frame whose end has not arrived yet
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            raise asyncio.IncompleteReadError(pending, None)
        alive()
        if pending:
            data = pending + data
        pos = 0
        end = len(data)
        handed = 0
        while end - pos >= 4:
            (length,) = _unpack_from(data, pos)
            if length & CONTROL:
                if length != PING:
                    raise ProtocolError(f"unknown control frame 0x{length:08x}")
                pos += 4
                continue
            if length > limit:
                raise FrameTooLarge(
                    f"peer announced a frame of {length} bytes, over the limit of {limit}"
                )
            stop = pos + 4 + length
            if stop > end:
                if length > CHUNK:  # a large body: read the rest in chunks, join once
                    pause = on_frame(await _rest(reader, data[pos + 4 :], length, alive))
                    if pause is not None:
                        await paused(pause)
                    pos = end
                break
            pause = on_frame(data[pos + 4 : stop])
            pos = stop
            if pause is not None:
                await paused(pause)
            handed += 1
            if handed == YIELD_EVERY:
                handed = 0
                await asyncio.sleep(0)
        pending = data[pos:] if pos < end else b""
        await asyncio.sleep(0)


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
