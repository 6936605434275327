"""Cluster nodes in processes of their own (tests/cluster_node.py), and the signals the
fault tests send them: ``kill -9``, SIGSTOP/SIGCONT (a frozen process keeps its
sockets and answers nothing), SIGTERM.

``NodeProc.start`` waits (bounded) for the address line the node prints once it has
joined; ``stats`` asks it for its counters over its stdin; ``close`` ends it whatever
state it is in and reaps it, so no process outlives its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import IO, Any

from kerna.testing import pause_process, resume_process

__all__ = ["ROOT", "NodeProc"]

ROOT = Path(__file__).resolve().parent.parent


class NodeProc:
    """One ``python -m tests.cluster_node`` process (see the module docstring)."""

    def __init__(self, etcd_url: str, cluster: str, node_id: str, lease_ttl: float) -> None:
        self.args = [etcd_url, cluster, node_id, str(lease_ttl)]
        self.node_id = node_id
        self.address = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self, timeout: float = 20.0) -> NodeProc:
        """Start the process and wait until it has joined (its address printed).

        Raises:
            AssertionError: it exited or did not join within ``timeout``.
        """
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.cluster_node", *self.args,
            cwd=ROOT, stdin=PIPE, stdout=PIPE, stderr=self._log,
        )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            line = b""
        if not line:
            await self.close()
            raise AssertionError(f"node {self.node_id} did not join:\n{self.log()[-3000:]}")
        self.address = line.decode().strip()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """What the process wrote to stderr so far (its log)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    async def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Its counters (``{"types": {name: {"active", "activations", "handled"}},
        "members": [...]}``), asked over its stdin."""
        proc = self.proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"stats\n")
        async with asyncio.timeout(timeout):
            await proc.stdin.drain()
            line = await proc.stdout.readline()
        if not line:
            raise AssertionError(f"node {self.node_id} exited:\n{self.log()[-3000:]}")
        stats: dict[str, Any] = json.loads(line)
        return stats

    async def kill(self) -> None:
        """``kill -9``, reaped."""
        proc = self.proc
        assert proc is not None
        if proc.returncode is None:
            proc.kill()
        async with asyncio.timeout(10):
            await proc.wait()

    async def sigstop(self) -> None:
        """Freeze it (SIGSTOP); returns once the kernel shows it stopped."""
        await asyncio.to_thread(pause_process, self.pid)

    async def sigcont(self) -> None:
        """Resume it (SIGCONT); returns once it runs again."""
        await asyncio.to_thread(resume_process, self.pid)

    async def close(self) -> None:
        """End it (stdin closed, then SIGKILL if it is still there after 5 s) and reap."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a frozen process cannot exit
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
