"""Remote asks between real processes over a network transport: two caller processes
asking one agent at once each get exactly their own replies (autogen upstream issue
#7016: two grpc workers asking one agent get each other's replies)."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from asyncio.subprocess import PIPE
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import pytest

from kerna import Kernel
from kerna.testing import free_ports, require_module
from kerna.transports import transport_class

from .remote_caller import Echo

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
ASKS = 300
BASES = (0, 1_000_000)
"""Each caller's request numbers: a reply delivered to the other caller shows."""


def _tcp() -> str:
    try:
        transport_class("tcp://127.0.0.1:1")
    except Exception as exc:  # the tcp transport module is missing or broken here
        require_module("kerna.transports._tcp", f"the tcp transport ({exc})")
    return f"tcp://127.0.0.1:{free_ports(1)[0]}"


async def _read_line(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        return await proc.stdout.readline()


async def _replies(proc: asyncio.subprocess.Process, log: IO[bytes]) -> list[int]:
    line = await _read_line(proc)
    if not line:  # it failed: say why (its asks timed out, or it crashed)
        async with asyncio.timeout(10):
            await proc.wait()
        log.seek(0)
        pytest.fail(f"a caller exited {proc.returncode} without replies:\n{log.read()[-2000:]!r}")
    replies: list[int] = json.loads(line)
    return replies


async def test_two_caller_processes_asking_one_agent_at_once_each_get_their_own_replies() -> None:
    listen = _tcp()
    async with Kernel(transport=listen, stop_grace=0.5) as server:
        Echo.hold = len(BASES) * ASKS  # every reply waits until all asks are in
        server.register(Echo)
        assert server.address is not None
        callers: list[asyncio.subprocess.Process] = []
        with ExitStack() as files:
            logs = [files.enter_context(tempfile.TemporaryFile()) for _ in BASES]
            try:
                for base, log in zip(BASES, logs, strict=True):
                    command = ["-m", "tests.remote_caller", _tcp(), server.address]
                    callers.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            *command,
                            str(ASKS),
                            str(base),
                            cwd=ROOT,
                            stdin=PIPE,
                            stdout=PIPE,
                            stderr=log,  # a file: never a full pipe
                        )
                    )
                for proc in callers:  # both connected before either asks
                    assert await _read_line(proc) == b"ready\n"
                for proc in callers:
                    assert proc.stdin is not None
                    proc.stdin.write(b"go\n")
                outs = [await _replies(p, log) for p, log in zip(callers, logs, strict=True)]
            finally:
                for proc in callers:
                    if proc.returncode is None:
                        proc.kill()
                    async with asyncio.timeout(10):
                        await proc.wait()
        assert outs == [[base + i for i in range(ASKS)] for base in BASES]
        assert server.stats().types["Echo"].handled == 2 * (ASKS + 1)
