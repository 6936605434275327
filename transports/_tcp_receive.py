"""The receive side of an accepted tcp connection, as an asyncio ``Protocol``.

After the handshake the connection's stream protocol is swapped for ``FrameReceiver``:
the bytes the event loop reads are split into frames and handed over in the same
callback (``data_received``), with no reader task to wake in between (one loop pass
less per received batch than a ``StreamReader`` loop). The length prefix is checked
against the limit before anything is kept for the body; a body still arriving is kept
as its chunks (each a sign of life) and joined once; when ``on_frame`` returns an
awaitable, reading pauses (``pause_reading``) until it completes (frames already read
are handed over even if the connection closes meanwhile); and every ``YIELD_EVERY``
frames of one read the loop gets a turn (splitting resumed by ``call_soon``) so
that the frames handed over are handled before more are split.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ._base import FrameTooLarge
from ._tcp_framing import CONTROL, PING, YIELD_EVERY, ProtocolError, unpack_length

__all__ = ["FrameReceiver"]


class FrameReceiver(asyncio.Protocol):
    """Splits one connection's bytes into frames; ``ended`` completes when it closes
    (with the error that closed it, None for a clean end of stream)."""

    def __init__(
        self,
        transport: asyncio.Transport,
        limit: int,
        on_frame: Callable[[bytes], Awaitable[object] | None],
        alive: Callable[[], None],
        paused: Callable[[bool], None],
    ) -> None:
        self._transport = transport
        self._limit = limit
        self._on_frame = on_frame
        self._alive = alive
        self._paused = paused
        self._loop = asyncio.get_running_loop()
        self._data = b""  # bytes read and not split yet, from ``_pos`` on
        self._pos = 0  # (an offset, not a slice: a turn every 32 frames copies nothing)
        self._more: list[bytes] = []  # reads that came while waiting, not joined yet
        self._body: list[bytes] = []  # a large frame's body so far
        self._body_size = 0
        self._body_length = 0
        self._waiting = False  # on_frame asked for a pause, or the loop's turn
        self._closed: tuple[BaseException | None] | None = None  # closed while waiting
        self.ended: asyncio.Future[BaseException | None] = self._loop.create_future()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._alive()
        if self._waiting:  # split once the pause or the turn is over
            self._more.append(data)
        else:
            self._take(data)

    def eof_received(self) -> bool:
        self._end(asyncio.IncompleteReadError(b"", None))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc if exc is not None else ConnectionResetError("connection closed"))

    # -- splitting ----------------------------------------------------------------------

    def _take(self, data: bytes) -> None:
        """A read to split now (not waiting: everything before it was split, so
        ``_data`` holds at most the start of one frame and ``_pos`` is 0)."""
        if self._body_length:
            self._more_body(data)
        else:
            self._data = self._data + data if self._data else data
        if not self._waiting:
            self._split()

    def _split(self) -> None:
        data = self._data
        pos = self._pos
        end = len(data)
        handed = 0
        try:
            while end - pos >= 4:
                length = unpack_length(data, pos)
                if length & CONTROL:
                    if length != PING:
                        raise ProtocolError(f"unknown control frame 0x{length:08x}")
                    pos += 4
                    continue
                if length > self._limit:
                    raise FrameTooLarge(
                        f"peer announced a frame of {length} bytes, over the limit of {self._limit}"
                    )
                stop = pos + 4 + length
                if stop > end:  # the body is still arriving: keep its chunks
                    self._body = [data[pos + 4 :]]
                    self._body_size = end - pos - 4
                    self._body_length = length
                    pos = end
                    break
                pause = self._on_frame(data[pos + 4 : stop])
                pos = stop
                handed += 1
                if pause is not None:
                    self._pos = pos
                    self._wait(asyncio.ensure_future(pause))
                    return
                if handed == YIELD_EVERY and end - pos >= 4:
                    self._pos = pos
                    self._turn()
                    return
        except (FrameTooLarge, ProtocolError) as exc:
            self._data, self._pos, self._more = b"", 0, []
            self._waiting = False
            self._closed = None
            self._end(exc)
            self._transport.abort()
            return
        self._data = data[pos:] if pos < end else b""
        self._pos = 0

    def _more_body(self, data: bytes) -> None:
        need = self._body_length - self._body_size
        self._body.append(data[:need] if len(data) > need else data)
        self._body_size += min(len(data), need)
        if self._body_size < self._body_length:
            return
        frame = b"".join(self._body)
        self._body, self._body_size, self._body_length = [], 0, 0
        self._data = data[need:] if len(data) > need else b""
        self._pos = 0
        pause = self._on_frame(frame)
        if pause is not None:
            self._wait(asyncio.ensure_future(pause))

    def _wait(self, until: asyncio.Future[object]) -> None:
        """Hand over nothing more (and read nothing) until ``until`` completes."""
        self._waiting = True
        self._paused(True)
        self._pause_reading()
        until.add_done_callback(self._resume)

    def _turn(self) -> None:
        """Give the loop a turn before splitting the rest of this read (reading goes
        on: what arrives meanwhile waits in ``_more``, one loop pass's worth; pausing
        the socket would cost two system calls per turn)."""
        self._waiting = True
        self._loop.call_soon(self._resume, None)

    def _resume(self, _: object) -> None:
        """The pause is over: split what is held (frames that arrived before the
        connection closed are still handed over, in order), then read again, or end."""
        if self.ended.done():
            return
        self._paused(False)
        self._waiting = False
        if self._body_length == 0 and len(self._data) > self._pos:
            self._split()
        more = self._more
        while more and not self._waiting:
            self._take(more.pop(0))
        if self._waiting:
            return
        if self._closed is not None:
            self.ended.set_result(self._closed[0])
        elif not self._transport.is_reading():
            self._transport.resume_reading()

    def _pause_reading(self) -> None:
        if self._transport.is_reading():
            self._transport.pause_reading()

    def _end(self, error: BaseException | None) -> None:
        if self.ended.done() or self._closed is not None:
            return
        if self._waiting and (len(self._data) > self._pos or self._more):  # held go first
            self._closed = (error,)
            return
        self.ended.set_result(error)
