"""A throwaway etcd for ``kerna demo --nodes N``: one member on free 127.0.0.1 ports.

``LocalEtcd`` starts the etcd binary (Debian's ``etcd-server``; ``make demo-cluster``
installs it) with its data directory in a fresh temporary directory, waits for
``GET /health`` (bounded), and on ``close`` stops that process by its PID and removes
the directory: the demo leaves no server behind. Elections are fast (a single member
elects itself in well under a second), as in the test suite's etcd fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from kerna import ConfigError

__all__ = ["LocalEtcd", "etcd_binary", "free_ports"]


def etcd_binary() -> str:
    """The etcd executable (``$KERNA_ETCD``, else ``etcd`` on the PATH, else
    /usr/bin/etcd).

    Raises:
        ConfigError: there is none.
    """
    found = os.environ.get("KERNA_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(found, os.X_OK):
        raise ConfigError(
            "kerna demo --nodes needs etcd: apt-get install etcd-server (or make demo-cluster)"
        )
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct 127.0.0.1 ports nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class LocalEtcd:
    """One etcd member in a temporary directory (a context manager).

    Args:
        root: the directory for its data and log (created by the caller, removed by
            the caller too).

    Attributes:
        url: ``etcd://127.0.0.1:<port>``, once started.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client_port, self.peer_port = free_ports(2)
        self.url = f"etcd://127.0.0.1:{self.client_port}"
        self.log_path = root / "etcd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until ``/health`` says true.

        Raises:
            ConfigError: no etcd binary.
            RuntimeError: it exited, or was not healthy within ``timeout`` (the tail of
                its log is in the message).
        """
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            etcd_binary(),
            "--name", "demo",
            "--data-dir", str(self.root / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"demo={peer}",
            "--initial-cluster-token", f"kerna-demo-{self.root.name}",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited ({self._proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"etcd not healthy in {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop the process by its PID (SIGTERM, then SIGKILL after 5 s) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalEtcd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def temp_root() -> Path:
    """A fresh temporary directory (on /dev/shm where there is one: etcd fsyncs)."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="kerna-demo-", dir=base))
