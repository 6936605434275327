"""The tcp transport's frame splitter (``FrameReceiver``, the protocol of an accepted
connection) fed as the event loop feeds it.

Many frames arrive in one read, one frame arrives over many reads, heartbeats sit
between frames, and a large body arrives in chunks: every data frame comes out once,
whole, in order; a pause holds back what follows it; a bad prefix ends the connection
with a clear error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from kerna.transports import FrameTooLarge
from kerna.transports._tcp_framing import CHUNK, PING_BYTES, YIELD_EVERY, ProtocolError, header
from kerna.transports._tcp_receive import HOLD, FrameReceiver

PEER = "tcp://127.0.0.1:1"

pytestmark = pytest.mark.anyio


class _Socket:
    """The part of an asyncio transport a FrameReceiver uses: reading paused and
    resumed, and aborted (this test feeds it only while it reads, as the loop does)."""

    def __init__(self) -> None:
        self.reading = True
        self.aborted = False
        self.resumed = asyncio.Event()

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False
        self.resumed.clear()

    def resume_reading(self) -> None:
        self.reading = True
        self.resumed.set()

    def abort(self) -> None:
        self.aborted = True


def _record(into: list[bytes]) -> Callable[[str, bytes], None]:
    def on_frame(peer: str, frame: bytes) -> None:
        into.append(frame)

    return on_frame


def _wire(frames: list[bytes], pings: bool) -> bytes:
    parts: list[bytes] = []
    for frame in frames:
        if pings:
            parts.append(PING_BYTES)
        parts += [header(len(frame)), frame]
    return b"".join(parts)


def _receiver(
    on_frame: Callable[[str, bytes], object],
    limit: int = 1 << 30,
    alive: Callable[[], None] = lambda: None,
) -> tuple[FrameReceiver, _Socket]:
    sock = _Socket()
    receiver = FrameReceiver(sock, limit, PEER, on_frame, alive, lambda _: None)  # type: ignore[arg-type]
    return receiver, sock


def _read(receiver: FrameReceiver, data: memoryview) -> int:
    """One read as the event loop makes it: into the buffer the receiver offers (as
    much of ``data`` as fits); returns the bytes it took."""
    buffer = receiver.get_buffer(-1)
    n = min(len(buffer), len(data))
    assert n > 0, "the receiver offered an empty buffer"
    buffer[:n] = data[:n]
    receiver.buffer_updated(n)
    return n


def _give(receiver: FrameReceiver, sock: _Socket, piece: bytes) -> None:
    """``piece`` read at once (reads while reading is not paused, as the loop does)."""
    data = memoryview(piece)
    while data and sock.reading:
        data = data[_read(receiver, data) :]


async def _feed(receiver: FrameReceiver, sock: _Socket, piece: bytes) -> None:
    data = memoryview(piece)
    while data:
        async with asyncio.timeout(5):
            while not sock.reading:  # the loop reads nothing while reading is paused
                await sock.resumed.wait()
        data = data[_read(receiver, data) :]


async def _split(data: bytes, cuts: list[int], limit: int = 1 << 30) -> tuple[list[bytes], int]:
    got: list[bytes] = []
    reads = 0

    def alive() -> None:
        nonlocal reads
        reads += 1

    receiver, sock = _receiver(_record(got), limit, alive)
    start = 0
    for cut in [*cuts, len(data)]:
        await _feed(receiver, sock, data[start:cut])
        start = cut
    async with asyncio.timeout(5):
        while not sock.reading:
            await sock.resumed.wait()
    receiver.eof_received()
    async with asyncio.timeout(5):
        assert isinstance(await receiver.ended, asyncio.IncompleteReadError)
    return got, reads


@pytest.mark.parametrize("seed", range(20))
async def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(seed: int) -> None:
    rng = random.Random(seed)
    frames = [rng.randbytes(rng.choice([0, 1, 3, 4, 5, 100, 70_000])) for _ in range(40)]
    data = _wire(frames, pings=seed % 2 == 0)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 60))))
    got, _ = await _split(data, cuts)
    assert got == frames


async def test_a_large_body_is_read_in_chunks_each_a_sign_of_life() -> None:
    body = random.Random(1).randbytes(CHUNK * 5 + 17)
    data = _wire([b"a", body, b"b"], pings=False)
    cuts = list(range(1000, len(data), 50_000))
    got, reads = await _split(data, cuts)
    assert got == [b"a", body, b"b"]
    assert reads > len(body) // CHUNK  # alive() at least once per chunk


async def test_an_oversized_prefix_is_refused_before_its_body_arrives() -> None:
    receiver, sock = _receiver(lambda _peer, _frame: None, limit=999)
    _give(receiver, sock, header(1000))  # the body never comes
    error = await receiver.ended
    assert isinstance(error, FrameTooLarge)
    assert "1000 bytes" in str(error)
    assert sock.aborted


async def test_an_unknown_control_frame_is_a_protocol_error() -> None:
    got: list[bytes] = []
    receiver, sock = _receiver(_record(got), limit=100)
    _give(receiver, sock, header(4) + b"good" + (0x8000_0001).to_bytes(4, "big"))
    error = await receiver.ended
    assert isinstance(error, ProtocolError)
    assert "0x80000001" in str(error)
    assert got == [b"good"]
    assert sock.aborted


def _pausing_at_stop(
    into: list[bytes], gate: asyncio.Future[None]
) -> Callable[[str, bytes], asyncio.Future[None] | None]:
    """Records each frame; the frame ``b"stop"`` asks for a pause until ``gate``."""

    def on_frame(peer: str, frame: bytes) -> asyncio.Future[None] | None:
        into.append(frame)
        return gate if frame == b"stop" else None

    return on_frame


async def test_a_pause_holds_back_the_frames_after_it_until_it_completes() -> None:
    got: list[bytes] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    receiver, sock = _receiver(_pausing_at_stop(got, gate), limit=100)
    _give(receiver, sock, _wire([b"a", b"stop", b"b", b"c"], pings=False))
    await asyncio.sleep(0)  # one loop turn: a read of several frames is split then
    assert got == [b"a", b"stop"]
    assert not sock.reading
    gate.set_result(None)
    async with asyncio.timeout(5):
        await sock.resumed.wait()
    assert got == [b"a", b"stop", b"b", b"c"]


async def test_frames_held_behind_a_pause_are_handed_over_when_the_connection_closes_first() -> (
    None
):
    got: list[bytes] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    receiver, sock = _receiver(_pausing_at_stop(got, gate), limit=100)
    _give(receiver, sock, _wire([b"stop", b"b", b"c"], pings=False))
    receiver.connection_lost(ConnectionResetError("reset"))
    assert not receiver.ended.done()  # not before what it holds is handed over
    gate.set_result(None)
    async with asyncio.timeout(5):
        assert isinstance(await receiver.ended, ConnectionResetError)
    assert got == [b"stop", b"b", b"c"]


async def test_the_loop_gets_a_turn_every_yield_every_frames_of_one_read() -> None:
    got: list[bytes] = []
    receiver, sock = _receiver(_record(got), limit=100)
    frames = [b"%d" % i for i in range(3 * YIELD_EVERY + 5)]
    _give(receiver, sock, _wire(frames, pings=False))
    assert got == []  # a read of several frames: split at the next loop turn
    async with asyncio.timeout(5):
        for turn in (1, 2, 3):
            await asyncio.sleep(0)  # one loop turn
            assert got == frames[: turn * YIELD_EVERY]
        await asyncio.sleep(0)
    assert got == frames
    assert sock.reading  # a turn does not pause the socket


async def test_a_read_of_one_frame_is_handed_over_at_once_a_read_of_several_at_the_next_turn() -> (
    None
):
    got: list[bytes] = []
    receiver, sock = _receiver(_record(got), limit=100)
    _give(receiver, sock, _wire([b"lone"], pings=False))
    assert got == [b"lone"]  # in the read's own callback: a lone ask waits no pass
    _give(receiver, sock, _wire([b"a", b"b"], pings=False))
    _give(receiver, sock, _wire([b"c"], pings=False))  # arrives in the same loop pass
    assert got == [b"lone"]
    await asyncio.sleep(0)  # one loop turn: the batch, with what came meanwhile
    assert got == [b"lone", b"a", b"b", b"c"]
    _give(receiver, sock, PING_BYTES + _wire([b"d"], pings=False))  # a ping, then a frame
    assert got == [b"lone", b"a", b"b", b"c"]
    await asyncio.sleep(0)
    assert got == [b"lone", b"a", b"b", b"c", b"d"]


async def test_reading_pauses_while_more_than_hold_bytes_wait_for_their_turn() -> None:
    got: list[bytes] = []
    receiver, sock = _receiver(_record(got), limit=1 << 20)
    frames = [b"%06d" % i + b"x" * 90 for i in range(3 * HOLD // 100)]
    data = memoryview(_wire(frames, pings=False))
    reads = 0
    while data and sock.reading:  # a peer faster than the splitting: one read a pass
        data = data[_read(receiver, data[:8192]) :]
        reads += 1
    assert not sock.reading, "the receiver kept reading past HOLD bytes"
    assert reads * 8192 < HOLD + 2 * 8192  # it paused as soon as HOLD bytes waited
    async with asyncio.timeout(5):
        while data:
            await _feed(receiver, sock, bytes(data[:8192]))
            data = data[8192:]
        for _ in range(len(frames)):  # loop turns: YIELD_EVERY frames each
            if len(got) == len(frames):
                break
            await asyncio.sleep(0)
    assert got == frames


async def test_frames_are_counted_and_after_supersede_dropped_not_handed_over() -> None:
    got: list[bytes] = []
    receiver, sock = _receiver(_record(got), limit=1 << 20)
    big = b"z" * (CHUNK + 10)  # through the large-body path
    _give(receiver, sock, _wire([b"one"], pings=False))
    _give(receiver, sock, _wire([big], pings=False))
    assert got == [b"one", big]
    assert (receiver.frames, receiver.bytes, receiver.dropped) == (2, 4 + 3 + 4 + len(big), 0)
    receiver.supersede()
    _give(receiver, sock, _wire([b"late"], pings=False))
    _give(receiver, sock, _wire([big], pings=False))
    assert got == [b"one", big]  # nothing more handed over
    assert (receiver.frames, receiver.dropped) == (2, 2)


async def test_a_frame_whose_on_frame_raises_is_logged_and_the_next_ones_still_come(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[bytes] = []

    def on_frame(peer: str, frame: bytes) -> None:
        if frame == b"bad":
            raise RuntimeError("a bug in the receiver's callback")
        got.append(frame)

    receiver, sock = _receiver(on_frame, limit=1 << 20)
    _give(receiver, sock, _wire([b"a"], pings=False))
    _give(receiver, sock, _wire([b"bad", b"b"], pings=False))  # split at the next pass
    await asyncio.sleep(0)  # one loop turn: the batch
    assert got == [b"a", b"b"]
    assert receiver.frames == 3
    assert f"on_frame raised for a frame from {PEER}" in caplog.text
    assert "a bug in the receiver's callback" in caplog.text
