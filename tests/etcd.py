"""Real etcd servers for tests: ``etcd_server`` (one member, shared by the session) and
``etcd_cluster`` (three members, one per test).

The fixtures start Debian's etcd binary (package etcd-server) on free 127.0.0.1 ports
with data directories on /dev/shm (a temporary directory where that is missing), and
wait for ``GET /health``. Elections are fast (``--heartbeat-interval 50
--election-timeout 500``: a new leader in about 0.6 s, a minimum lease TTL of 1 s).
Processes are stopped by PID and reaped; an exit hook kills whatever a crashed session
left. Without the binary the tests skip, or fail under ``KERNA_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

__all__ = ["EtcdCluster", "EtcdMember", "etcd_cluster", "etcd_server", "free_ports"]

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
FAST_ELECTIONS = ("--heartbeat-interval", "50", "--election-timeout", "500")
_running: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def require_etcd() -> None:
    """Skip (or fail, under KERNA_REQUIRE_SERVERS=1) when etcd is not installed."""
    if not os.access(ETCD, os.X_OK):
        from .conftest import require_server  # here: conftest imports this module

        require_server("etcd not installed: apt-get install etcd-server")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _data_root() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="kerna-etcd-", dir=base))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took.

    Raises:
        TimeoutError: still false after ``timeout`` seconds.
    """
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


class EtcdMember:
    """One etcd process: its ports, data directory and the signals tests send it."""

    def __init__(
        self,
        name: str,
        root: Path,
        client_port: int,
        peer_port: int,
        initial_cluster: str,
        extra_args: Sequence[str] = (),
        *,
        health_port: int | None = None,
    ) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = root / name
        self.log_path = root / f"{name}.log"
        self._initial_cluster = initial_cluster
        self._extra_args = tuple(extra_args)
        # Where /health answers over plain HTTP: the client port, or a metrics port
        # when the client port speaks TLS.
        self._health_port = health_port or client_port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.endpoint,)

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"

    @property
    def pid(self) -> int:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"etcd member {self.name} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process (on the same ports and data directory as before, if any)."""
        if self.running:
            raise RuntimeError(f"etcd member {self.name} is already running")
        scheme = "https" if "--cert-file" in self._extra_args else "http"
        client = f"{scheme}://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self._initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"kerna-{self.data_dir.parent.name}",
            "--logger", "zap",
            "--log-level", "warn",
            *FAST_ELECTIONS,
            *self._extra_args,
        ]  # fmt: skip
        if self._health_port != self.client_port:
            args += ["--listen-metrics-urls", f"http://127.0.0.1:{self._health_port}"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _running.add(self._proc)

    def healthy(self, timeout: float = 0.5) -> bool:
        """Whether ``GET /health`` says true (the member is up and has a leader)."""
        url = f"http://127.0.0.1:{self._health_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 15.0) -> float:
        """Wait for ``/health``; returns the seconds it took.

        Raises:
            RuntimeError: the process exited (its log's tail is in the message).
            TimeoutError: not healthy within ``timeout``.
        """

        def up() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"etcd member {self.name} exited:\n{self.log_tail()}")
            return self.healthy()

        return wait_until(up, timeout, f"etcd member {self.name} healthy")

    def status(self, timeout: float = 0.5) -> dict[str, object] | None:
        """The member's ``Maintenance.Status`` (JSON gateway), or None if it does not answer."""
        request = urllib.request.Request(
            f"http://{self.endpoint}/v3/maintenance/status", data=b"{}", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status: dict[str, object] = json.load(response)
                return status
        except (OSError, ValueError):
            return None

    def member_id(self) -> str | None:
        status = self.status()
        header = status.get("header") if status else None
        return str(header["member_id"]) if isinstance(header, dict) else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop_process(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send ``sig``; for a signal that ends the process, wait for it and reap it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            return
        if sig != signal.SIGKILL:
            proc.send_signal(signal.SIGCONT)  # a stopped process handles SIGTERM only now
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _running.discard(proc)

    def kill(self) -> None:
        """``kill -9`` and reap."""
        self.stop_process(signal.SIGKILL)

    def sigstop(self) -> None:
        """Freeze the process (it keeps its sockets open and answers nothing)."""
        self.stop_process(signal.SIGSTOP)
        wait_until(lambda: self._state() in ("T", "t"), 5, f"etcd member {self.name} stopped")

    def sigcont(self) -> None:
        self.stop_process(signal.SIGCONT)
        wait_until(lambda: self._state() not in ("T", "t"), 5, f"etcd member {self.name} resumed")

    def _state(self) -> str:
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]

    def restart(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> float:
        """Stop the process with ``sig``, start it again on the same ports and data
        directory, and wait for ``/health``; returns the seconds that took."""
        start = time.monotonic()
        self.stop_process(sig)
        self.start()
        self.wait_healthy(timeout)
        return time.monotonic() - start

    def ensure_running(self) -> None:
        """Undo whatever a test did: resume a stopped process, start a dead one."""
        if self.running:
            if self._state() in ("T", "t"):
                self.sigcont()
        else:
            self.start()
        self.wait_healthy()

    def close(self) -> None:
        self.kill()


class EtcdCluster:
    """Three members on 127.0.0.1 with fast elections."""

    def __init__(self, root: Path, size: int = 3) -> None:
        ports = free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
        self.members = [
            EtcdMember(n, root, ports[2 * i], ports[2 * i + 1], initial)
            for i, n in enumerate(names)
        ]

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.endpoint for m in self.members)

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def url_from(self, *first: EtcdMember) -> str:
        """The cluster's URL with ``first`` members first (a backend connects to the
        first endpoint)."""
        order = [*first, *(m for m in self.members if m not in first)]
        return "etcd://" + ",".join(m.endpoint for m in order)

    def start(self) -> None:
        for m in self.members:
            m.start()
        for m in self.members:
            m.wait_healthy()

    def leader(self, timeout: float = 10.0) -> EtcdMember:
        """The current leader, as the running members see it (waits for one)."""
        found: list[EtcdMember] = []

        def elected() -> bool:
            ids = {}
            leaders = set()
            for m in self.members:
                if not m.running or m._state() in ("T", "t"):  # noqa: SLF001 - the fixture reads its own member process state
                    continue
                status = m.status(timeout=0.3)
                header = status.get("header") if status else None
                if status is None or not isinstance(header, dict):
                    continue
                ids[str(header["member_id"])] = m
                if status.get("leader") not in (None, "0"):
                    leaders.add(str(status["leader"]))
            if len(leaders) == 1 and (lead := leaders.pop()) in ids:
                found.append(ids[lead])
                return True
            return False

        wait_until(elected, timeout, "etcd cluster leader")
        return found[0]

    def followers(self) -> list[EtcdMember]:
        leader = self.leader()
        return [m for m in self.members if m is not leader]

    def close(self) -> None:
        for m in self.members:
            m.close()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdMember]:
    """One etcd member for the whole session (tests share it under their own keys).

    A test that stops or kills it calls ``ensure_running()`` when done.
    """
    require_etcd()
    root = _data_root()
    client, peer = free_ports(2)
    member = EtcdMember("single", root, client, peer, f"single=http://127.0.0.1:{peer}")
    try:
        member.start()
        member.wait_healthy()
        yield member
    finally:
        member.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A fresh three-member cluster for one test."""
    require_etcd()
    root = _data_root()
    cluster = EtcdCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
