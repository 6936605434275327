"""``kerna node`` in a process of its own, for the daemon tests.

``NodeProcess`` writes a config, starts ``python -m kerna node --config ...`` and reads
its JSON log lines from stderr: ``start`` waits (bounded) for the ``"event": "ready"``
line, not for a sleep; ``stop`` signals it and waits (bounded) for its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NodeProcess:
    """One node process.

    Args:
        root: a folder for its config (``node.toml``) and whatever the config names.
        config: the TOML text; ``{port}`` is replaced by a free HTTP port.
    """

    def __init__(self, root: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.path = root / "node.toml"
        self.path.write_text(config.replace("{port}", str(self.port)))
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.events: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._more = asyncio.Condition()  # notified on every log line read

    def event(self, name: str) -> asyncio.Event:
        """Set when a log line with ``"event": name`` is read."""
        return self.events.setdefault(name, asyncio.Event())

    async def start(self, timeout: float = 20.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kerna",
            "node",
            "--config",
            str(self.path),
            cwd=REPO,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        ready = asyncio.create_task(self.event("ready").wait())
        exited = asyncio.create_task(self.proc.wait())
        done, _ = await asyncio.wait(
            {ready, exited}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        ready.cancel()
        exited.cancel()
        if ready not in done:
            await self.kill()
            raise AssertionError(f"node not ready in {timeout}s:\n" + "\n".join(self.raw[-30:]))

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            text = raw.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            try:
                entry = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                self.lines.append(entry)
                if isinstance(entry.get("event"), str):
                    self.event(entry["event"]).set()
                async with self._more:
                    self._more.notify_all()

    async def line(
        self, message: str, timeout: float = 10.0, *, prefix: bool = False
    ) -> dict[str, Any]:
        """The first JSON log line whose ``message`` is ``message`` (or, with
        ``prefix``, starts with it); waits for it."""

        def matches(entry: dict[str, Any]) -> bool:
            text = entry.get("message")
            if not isinstance(text, str):
                return False
            return text.startswith(message) if prefix else text == message

        def found() -> dict[str, Any] | None:
            return next((e for e in self.lines if matches(e)), None)

        async with asyncio.timeout(timeout), self._more:
            await self._more.wait_for(lambda: found() is not None)
        entry = found()
        assert entry is not None
        return entry

    def send(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        """The exit code, once the process has exited (and its stderr is read)."""
        assert self.proc is not None
        assert self._reader is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.send(sig)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            await self.kill()
            raise

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


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
