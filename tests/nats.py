"""Real nats-server processes for tests: ``nats_server`` (shared by the session) and
``fresh_nats_server`` (one per test, for tests that freeze or kill it).

The fixtures start Debian's nats-server (package nats-server) on a free 127.0.0.1 port
with a configuration in a temporary directory that raises ``max_payload`` to 8 MiB (the
server's default is 1 MiB), and wait for its ``INFO`` greeting. Processes are stopped by
PID and reaped; an exit hook kills whatever a crashed session left. Without the binary
the tests skip, or fail under ``KERNA_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .etcd import free_ports, wait_until

__all__ = ["MAX_PAYLOAD", "NatsServer", "fresh_nats_server", "nats_server", "nats_server_with"]

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
MAX_PAYLOAD = 8 * 1024 * 1024
_running: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def require_nats_server() -> None:
    """Skip (or fail, under KERNA_REQUIRE_SERVERS=1) when nats-server is not installed."""
    if not os.access(NATS_SERVER, os.X_OK):
        from .conftest import require_server  # here: conftest imports this module

        require_server("nats-server not installed: apt-get install nats-server")


class NatsServer:
    """One nats-server process: its port, configuration and the signals tests send it."""

    def __init__(self, root: Path, max_payload: int = MAX_PAYLOAD, extra_config: str = "") -> None:
        (self.port,) = free_ports(1)
        self.root = root
        self.config = root / "nats.conf"
        self.log_path = root / "nats.log"
        self.log_path.write_text("")
        # max_pending (64 MB by default) bounds max_payload: keep it above.
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"max_payload: {max_payload}\n"
            f"max_pending: {max(64 * 1024 * 1024, 2 * max_payload)}\n"
            f"{extra_config}\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("nats-server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the process and wait for its greeting.

        Raises:
            RuntimeError: already running, or it exited (its log's tail is in the message).
            TimeoutError: no greeting within ``timeout``.
        """
        if self.running:
            raise RuntimeError("nats-server is already running")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _running.add(self._proc)

        def up() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited:\n{self.log_tail()}")
            # Its own log, not only a greeting on the port: another session's server
            # may have taken the port between free_ports and this bind.
            return "Server is ready" in self.log_tail(200) and self.greets()

        wait_until(up, timeout, "nats-server greeting")

    def greets(self, timeout: float = 0.5) -> bool:
        """Whether the server sends its ``INFO`` line on a new connection."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                return s.recv(5) == b"INFO "
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _state(self) -> str:
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]

    def sigstop(self) -> None:
        """Freeze the process (it keeps its sockets open and answers nothing)."""
        self.pid  # noqa: B018 - raises if it is not running
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: self._state() in ("T", "t"), 5, "nats-server stopped")

    def sigcont(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)
        wait_until(lambda: self._state() not in ("T", "t"), 5, "nats-server resumed")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (after SIGCONT, so a frozen one handles it), then SIGKILL; reaped."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _running.discard(proc)


@contextlib.contextmanager
def nats_server_with(extra_config: str = "", root: Path | None = None) -> Iterator[NatsServer]:
    """A nats-server of the caller's own, with ``extra_config`` added to its
    configuration (authorization, tls), in ``root`` (a new temporary directory if None);
    stopped and its directory removed on exit."""
    require_nats_server()
    root = root or Path(tempfile.mkdtemp(prefix="kerna-nats-"))
    server = NatsServer(root, extra_config=extra_config)
    try:
        for attempt in range(3):
            try:
                server.start()
                break
            except RuntimeError:
                # The free port was taken before nats-server bound it: another one.
                if attempt == 2 or "address already in use" not in server.log_tail():
                    raise
                server = NatsServer(root, extra_config=extra_config)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One nats-server for the whole session (tests share it under node names of their
    own); a test that freezes or stops a server uses ``fresh_nats_server``."""
    with nats_server_with() as server:
        yield server


@pytest.fixture
def fresh_nats_server() -> Iterator[NatsServer]:
    """A nats-server of one test's own."""
    with nats_server_with() as server:
        yield server
