"""``kerna node`` for the daemon tests: ``NodeProcess`` is ``kerna.testing``'s (one node
process, its JSON log lines and signals); ``run_cli`` runs the ``kerna`` CLI."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from kerna.testing import NodeProcess, free_ports

__all__ = ["NodeProcess", "free_port", "run_cli"]

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return free_ports(1)[0]


async def run_cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """``python -m kerna ARGS``: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kerna",
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
