"""Hostile frames over a real socket to a listening kerna process while good traffic
flows: the node keeps answering every good ask, and nothing crashes or hangs."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import pytest

from kerna import Kernel
from kerna.transports import open_transport

from . import fuzz_wire
from .agents import Ping

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 5_000


async def test_mutated_frames_to_a_node_in_another_process_leave_good_traffic_whole() -> None:
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.remote_server",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        address = (await asyncio.wait_for(server.stdout.readline(), 20)).decode().strip()
        assert address.startswith("tcp://")
        rng = random.Random(7)
        corpus = fuzz_wire.seed_frames(fuzz_wire.codec())
        fuzzer = open_transport("tcp://127.0.0.1:0", heartbeat=None)
        await fuzzer.start(lambda peer, frame: None, lambda peer, error: None)
        try:
            async with Kernel(transport="tcp://127.0.0.1:0") as client:
                ref = client.ref("Echo", "e", node=address)

                async def fuzz() -> None:
                    for _ in range(FRAMES):
                        frame = fuzz_wire.mutate(rng, rng.choice(corpus), corpus)
                        if len(frame) <= fuzzer.max_frame_size:
                            await fuzzer.send(address, frame)

                async def good() -> list[int]:
                    replies = []
                    for n in range(200):
                        replies.append((await ref.ask(Ping(n=n), timeout=10)).n)
                    return replies

                async with asyncio.timeout(60):
                    _, answered = await asyncio.gather(fuzz(), good())
                    assert answered == list(range(200))
                    assert (await ref.ask(Ping(n=-1), timeout=10)).n == -1  # still serving
        finally:
            await fuzzer.aclose()
        assert server.stdin is not None
        server.stdin.close()
        out = (await asyncio.wait_for(server.stdout.read(), 20)).decode()
        assert await asyncio.wait_for(server.wait(), 20) == 0
        assert "dead letters" in out  # the node stopped cleanly, counting what it refused
    finally:
        if server.returncode is None:
            server.kill()
            await asyncio.wait_for(server.wait(), 10)
