"""The tcp transport's frame splitter (``read_frames``) on a real StreamReader.

Many frames arrive in one read, one frame arrives over many reads, heartbeats sit
between frames, and a large body is read in chunks: every data frame comes out once,
whole, in order, and a bad prefix ends the stream with a clear error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from kerna.transports import FrameTooLarge
from kerna.transports._tcp_framing import CHUNK, PING_BYTES, ProtocolError, header, read_frames

pytestmark = pytest.mark.anyio


async def _never_paused(_: Awaitable[object]) -> None:
    raise AssertionError("on_frame asked for a pause")


def _record(into: list[bytes]) -> Callable[[bytes], None]:
    def on_frame(frame: bytes) -> None:
        into.append(frame)

    return on_frame


def _wire(frames: list[bytes], pings: bool) -> bytes:
    parts: list[bytes] = []
    for frame in frames:
        if pings:
            parts.append(PING_BYTES)
        parts += [header(len(frame)), frame]
    return b"".join(parts)


async def _split(data: bytes, cuts: list[int], limit: int = 1 << 30) -> tuple[list[bytes], int]:
    reader = asyncio.StreamReader()
    got: list[bytes] = []
    reads = 0

    def alive() -> None:
        nonlocal reads
        reads += 1

    task = asyncio.ensure_future(read_frames(reader, limit, _record(got), alive, _never_paused))
    start = 0
    for cut in [*cuts, len(data)]:
        reader.feed_data(data[start:cut])
        start = cut
        await asyncio.sleep(0)  # let the splitter take this piece on its own
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        async with asyncio.timeout(5):
            await task
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
    reader = asyncio.StreamReader()
    reader.feed_data(header(1000))  # the body never comes
    with pytest.raises(FrameTooLarge, match="1000 bytes"):
        async with asyncio.timeout(5):
            await read_frames(reader, 999, lambda _: None, lambda: None, _never_paused)


async def test_an_unknown_control_frame_is_a_protocol_error() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(header(4) + b"good" + (0x8000_0001).to_bytes(4, "big"))
    got: list[bytes] = []
    with pytest.raises(ProtocolError, match="0x80000001"):
        async with asyncio.timeout(5):
            await read_frames(reader, 100, _record(got), lambda: None, _never_paused)
    assert got == [b"good"]


async def test_a_pause_holds_back_the_frames_after_it_until_it_completes() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(_wire([b"a", b"stop", b"b", b"c"], pings=False))
    reader.feed_eof()
    got: list[bytes] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    held = asyncio.Event()

    def on_frame(frame: bytes) -> asyncio.Future[None] | None:
        got.append(frame)
        return gate if frame == b"stop" else None

    async def paused(until: Awaitable[object]) -> None:
        held.set()
        await until

    task = asyncio.ensure_future(read_frames(reader, 100, on_frame, lambda: None, paused))
    async with asyncio.timeout(5):
        await held.wait()
    assert got == [b"a", b"stop"]
    gate.set_result(None)
    with pytest.raises(asyncio.IncompleteReadError):
        async with asyncio.timeout(5):
            await task
    assert got == [b"a", b"stop", b"b", b"c"]
