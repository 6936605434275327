"""A process restarted on its ``sqlite://`` file after ``kill -9`` is not blocked by its
dead predecessor's leases: its agents' claims and its locks are free at once, not after
their TTL (the exclusive file lock admits one process, so every lease found when the
file is opened belonged to a process that is gone)."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import time
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from kerna import Kernel
from kerna.state import Lock, connect

from .agents import Counter, Inc

pytestmark = pytest.mark.anyio

TTL = 30.0  # far longer than the test may take: only releasing at open can pass it


_CHILD = textwrap.dedent(
    f"""
    import asyncio, sys
    from kerna import Kernel
    from kerna.state import Lock
    from tests.agents import Counter, Inc

    async def main():
        async with Kernel(state=sys.argv[1], lease_ttl={TTL}) as kernel:
            kernel.register(Counter)
            n = await kernel.ref(Counter, "c").ask(Inc(), timeout=10)
            lock = Lock(kernel.state_backend, "jobs", ttl={TTL})
            assert await lock.try_acquire()
            print("holding", n, flush=True)
            await asyncio.Event().wait()  # until killed

    asyncio.run(main())
    """
)


async def test_a_restart_after_kill_9_takes_over_its_predecessors_claims_at_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, url, stdout=PIPE, stderr=PIPE, cwd=Path(__file__).parents[1]
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            line = await proc.stdout.readline()
            assert line == b"holding 1\n", line + await proc.stderr.read()
    finally:
        proc.kill()  # SIGKILL: no lease is revoked, no claim released
        await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    started = time.monotonic()
    async with Kernel(state=url, lease_ttl=TTL, max_restarts=0) as kernel:
        kernel.register(Counter)
        # the dead process's claim is gone: the agent activates here, with its state
        assert await kernel.ref(Counter, "c").ask(Inc(), timeout=5) == 2
        lock = Lock(kernel.state_backend, "jobs", ttl=TTL)
        assert await lock.try_acquire()  # the dead process's lock is free too
        await lock.release()
    assert time.monotonic() - started < TTL / 3
    async with await connect(url) as backend:  # and a clean stop left nothing behind
        assert [kv.key for kv in (await backend.range("kerna/act/")).kvs] == []
