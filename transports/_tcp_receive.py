"""The receive side of an accepted tcp connection, as an asyncio ``BufferedProtocol``.

After the handshake the connection's stream protocol is swapped for ``FrameReceiver``:
the event loop reads straight into its buffer (``recv_into``; asyncio's own reads
allocate a fresh 256 KiB ``bytes`` per read, which costs about 15 µs a read on these
VMs), and the frames are split out and handed over in the same callback
(``buffer_updated``), with no reader task to wake in between (one loop pass less per
received frame than a ``StreamReader`` loop). A read that holds more than one frame is
split at the next loop pass instead, together with the reads that arrive by then (a
batch, as a ``StreamReader`` loop would take it). The length prefix is checked against the
limit before anything is kept for the body; a body over ``DIRECT`` bytes is received
into chunks of its own, at most ``CHUNK`` each (each read a sign of life), and joined
once, so memory for a frame in progress stays within what arrived plus one chunk; when
``on_frame`` returns an awaitable, reading pauses (``pause_reading``) until it
completes (frames already read are handed over even if the connection closes
meanwhile); and every ``YIELD_EVERY`` frames of one read the loop gets a turn
(splitting resumed by ``call_soon``) so that the frames handed over are handled before
more are split; reading goes on during a turn until ``HOLD`` bytes wait to be split.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ._base import FrameTooLarge
from ._tcp_framing import (
    CHUNK,
    CONTROL,
    PING,
    YIELD_EVERY,
    ProtocolError,
    unpack_header,
    unpack_length,
)

__all__ = ["BUFFER", "DIRECT", "HOLD", "FrameReceiver"]

log = logging.getLogger("kerna.transports.tcp")

BUFFER = 256 * 1024
"""Bytes of a connection's receive buffer (reused for every read)."""
MIN_FREE = 64 * 1024
"""Free bytes the buffer offers a read at least: the unsplit rest is moved to its start
(and, after a loop turn that left much unsplit, the buffer is replaced by a larger one)."""
DIRECT = 64 * 1024
"""A frame body over this many bytes is received into chunks of its own, not the buffer
(the buffer then never holds more than one small frame's start between reads)."""
HOLD = 128 * 1024
"""Bytes read and not yet split at which reading pauses until they are (a loop turn
splits ``YIELD_EVERY`` frames; a peer sending faster would otherwise fill memory)."""


class FrameReceiver(asyncio.BufferedProtocol):
    """Splits one connection's bytes into frames and hands each to
    ``on_frame(peer, frame)``; ``ended`` completes when it closes (with the error that
    closed it, None for a clean end of stream).

    Attributes:
        frames: data frames handed over so far.
        bytes: their bytes, with their length prefixes.
        dropped: frames dropped since ``supersede()`` (not handed over).
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        limit: int,
        peer: str,
        on_frame: Callable[[str, bytes], Awaitable[object] | None],
        alive: Callable[[], None],
        paused: Callable[[bool], None],
    ) -> None:
        self._transport = transport
        self._limit = limit
        self._peer = peer
        self._on_frame = on_frame  # _drop once superseded
        self.frames = 0
        self.bytes = 0
        self.dropped = 0
        self._alive = alive
        self._paused = paused
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray(BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0  # bytes from here to ``_end`` are read and not split yet
        self._end = 0
        self._body_left = 0  # a large body being received: the bytes still to come
        self._chunks: list[bytearray] = []  # its chunks so far (the last one filling)
        self._chunk_got = 0  # bytes in the last chunk
        self._waiting = False  # on_frame asked for a pause, or the loop's turn
        self._closed: tuple[BaseException | None] | None = None  # closed while waiting
        self.ended: asyncio.Future[BaseException | None] = self._loop.create_future()

    # -- asyncio.BufferedProtocol -------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body_left:
            chunks = self._chunks
            if not chunks or self._chunk_got == len(chunks[-1]):
                chunks.append(bytearray(min(self._body_left, CHUNK)))
                self._chunk_got = 0
            return memoryview(chunks[-1])[self._chunk_got :]
        if len(self._buf) - self._end < MIN_FREE:
            self._make_room()
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._alive()
        if self._body_left:
            self._chunk_got += nbytes
            self._body_left -= nbytes
            if self._body_left:
                return
            frame = b"".join(self._chunks)
            self._chunks = []
            pause = self._hand(frame)
            self._count(1, len(frame) + 4)
            if pause is not None:
                self._wait(asyncio.ensure_future(pause))
            return
        start = self._start
        end = self._end = self._end + nbytes
        held = end - start
        if self._waiting:
            if held >= HOLD and self._transport.is_reading():
                # Waiting for its turn while the peer sends faster than this node
                # splits: read no more until what is held was handed over (a bound).
                self._paused(True)
                self._transport.pause_reading()
            return
        if held > 4 and held > 4 + (unpack_length(self._buf, start) & ~CONTROL):
            # More than one frame: split at the next loop pass, with what else arrives
            # by then (a batch; uvloop calls back per read, and splitting each at once
            # cut 64 asks in flight by a third there). One frame: handed over now.
            self._turn()
        else:
            self._split()

    def supersede(self) -> None:
        """Hand over nothing more: the frames read from here on are dropped (counted
        in ``dropped``)."""
        self._on_frame = _drop

    def eof_received(self) -> bool:
        self._finish(asyncio.IncompleteReadError(b"", None))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc if exc is not None else ConnectionResetError("connection closed"))

    # -- splitting ----------------------------------------------------------------------

    def _make_room(self) -> None:
        """Move the unsplit bytes to the buffer's start; if that leaves less than
        ``MIN_FREE`` (a loop turn held much back), replace it with a larger one."""
        held = self._end - self._start
        if self._start:
            self._buf[:held] = self._buf[self._start : self._end]  # same size: allowed
            self._start, self._end = 0, held
        if len(self._buf) - held < MIN_FREE:
            larger = bytearray(2 * len(self._buf))
            larger[:held] = self._view[:held]
            self._buf, self._view = larger, memoryview(larger)

    def _split(self) -> None:
        buf = self._buf
        view = self._view
        pos = self._start
        end = self._end
        on_frame = self._on_frame
        peer = self._peer
        limit = self._limit
        handed = got = 0
        try:
            while end - pos >= 4:
                length = unpack_header(buf, pos)[0]  # (unpack_length, inline: per frame)
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
                    if length > DIRECT:  # the rest of its body goes into chunks of its own
                        have = end - pos - 4
                        self._chunks = [bytearray(view[pos + 4 : end])] if have else []
                        self._chunk_got = have
                        self._body_left = length - have
                        pos = end
                    break
                try:
                    pause = on_frame(peer, view[pos + 4 : stop].tobytes())
                except Exception:  # (as _hand, inline: per frame)
                    log.exception("on_frame raised for a frame from %s", peer)
                    pause = None
                got += stop - pos
                pos = stop
                handed += 1
                if pause is not None:
                    self._start = pos
                    self._wait(asyncio.ensure_future(pause))
                    return
                if handed == YIELD_EVERY and end - pos >= 4:
                    self._start = pos
                    self._turn()
                    return
        except (FrameTooLarge, ProtocolError) as exc:
            self._start = self._end = 0
            self._waiting = False
            self._closed = None
            self._finish(exc)
            self._transport.abort()
            return
        finally:
            self._count(handed, got)
        if pos == end:
            self._start = self._end = 0
        else:
            self._start = pos

    def _hand(self, frame: bytes) -> Awaitable[object] | None:
        try:
            return self._on_frame(self._peer, frame)
        except Exception:
            log.exception("on_frame raised for a frame from %s", self._peer)
            return None

    def _count(self, frames: int, size: int) -> None:
        if self._on_frame is _drop:  # superseded
            self.dropped += frames
        else:
            self.frames += frames
            self.bytes += size

    def _wait(self, until: asyncio.Future[object]) -> None:
        """Hand over nothing more (and read nothing) until ``until`` completes."""
        self._waiting = True
        self._paused(True)
        if self._transport.is_reading():
            self._transport.pause_reading()
        until.add_done_callback(self._resume)

    def _turn(self) -> None:
        """Give the loop a turn before splitting the rest of this read (reading goes
        on: what arrives meanwhile lands behind it in the buffer, up to ``HOLD`` bytes;
        pausing the socket at every turn would cost two system calls each)."""
        self._waiting = True
        self._loop.call_soon(self._resume, None)

    def _resume(self, _: object) -> None:
        """The pause is over: split what is held (frames that arrived before the
        connection closed are still handed over, in order), then read again, or end."""
        if self.ended.done():
            return
        self._paused(False)
        self._waiting = False
        if not self._body_left and self._end > self._start:
            self._split()
        if self._waiting:
            return
        if self._closed is not None:
            self.ended.set_result(self._closed[0])
        elif not self._transport.is_reading():
            self._transport.resume_reading()

    def _finish(self, error: BaseException | None) -> None:
        if self.ended.done() or self._closed is not None:
            return
        if self._waiting and self._end > self._start:  # what it holds goes first
            self._closed = (error,)
            return
        self.ended.set_result(error)


def _drop(peer: str, frame: bytes) -> None:
    """``on_frame`` once superseded: the frame is not handed over."""
