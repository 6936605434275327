"""A real redis-server for tests: ``redis_server`` (shared by the session).

The fixture starts Debian's redis-server (package redis-server) on a free 127.0.0.1
port, in a temporary directory, without persistence, and waits until it answers
``PING``. The process is stopped by PID and reaped; an exit hook kills whatever a
crashed session left. Without the binary the tests skip, or fail under
``KERNA_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .etcd import free_ports, wait_until

__all__ = ["RedisServer", "redis_server"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
_running: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


class RedisServer:
    """One redis-server process: its port and how to stop it."""

    def __init__(self, root: Path) -> None:
        (self.port,) = free_ports(1)
        self.root = root
        self.log_path = root / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the process and wait until it answers PING.

        Raises:
            RuntimeError: it exited (its log's tail is in the message).
            TimeoutError: no answer within ``timeout``.
        """
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.root), "--save", "", "--appendonly", "no"]
        args += ["--daemonize", "no", "--logfile", str(self.log_path)]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        _running.add(self._proc)

        def up() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.log_tail()}")
            return self.pongs()

        wait_until(up, timeout, "redis-server PONG")

    def pongs(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL; reaped."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _running.discard(proc)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session (tests use keys of their own)."""
    if not shutil.which(REDIS_SERVER):
        from .conftest import require_server

        require_server("redis-server not installed: apt-get install redis-server")
    root = Path(tempfile.mkdtemp(prefix="kerna-redis-"))
    server = RedisServer(root)
    try:
        for attempt in range(3):
            try:
                server.start()
                break
            except RuntimeError:  # the free port was taken before redis bound it
                if attempt == 2 or "Address already in use" not in server.log_tail():
                    raise
                server.stop()
                server = RedisServer(root)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
