"""One etcd member for the state benchmarks, and the raw gRPC floor's channel.

The process logic is a trimmed copy of ``kerna.testing.EtcdMember`` that keeps etcd's
default election timing (the test servers run fast elections, which the recorded
results were not measured with): free 127.0.0.1 ports, data directory on /dev/shm,
wait for ``GET /health``, stop by PID and reap. The raw floor talks to the member through
aetcd's gRPC stubs on a channel built exactly as kerna's etcd backend builds its own
(same channel options, same ``hasleader`` metadata, same per-call timeout).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from aetcd import rpc

__all__ = ["CALL_TIMEOUT", "METADATA", "EtcdServer", "RawEtcd", "channel_options", "prefix_end"]

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
METADATA = (("hasleader", "true"),)
"""What kerna's backend sends with every call (no auth here)."""
CALL_TIMEOUT = 2.0
"""kerna's per-attempt timeout (``probe_timeout``, default 2 s)."""


_OPTIONS_FALLBACK: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)


def channel_options() -> tuple[tuple[str, int], ...]:
    """kerna's gRPC channel options (private, so looked up where the module keeps them;
    a copy of today's values if it moved)."""
    for module in ("kerna.state._etcd_conn", "kerna.state._etcd"):
        try:
            options: tuple[tuple[str, int], ...] = importlib.import_module(module)._CHANNEL_OPTIONS  # noqa: SLF001 - the floor uses the exact channel options the backend uses
        except (ImportError, AttributeError):
            continue
        return options
    return _OPTIONS_FALLBACK


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


class EtcdServer:
    """A single etcd member on free ports, data on /dev/shm; a context manager."""

    def __init__(self) -> None:
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="kerna-bench-etcd-", dir=base))
        self.client_port, self.peer_port = _free_ports(2)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"

    @property
    def pid(self) -> int:
        return -1 if self._proc is None else self._proc.pid

    def version(self) -> str:
        out = subprocess.run([ETCD, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.splitlines()[0] if out.stdout else "?"

    def start(self, timeout: float = 20.0) -> None:
        client = f"http://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            ETCD,
            "--name", "bench",
            "--data-dir", str(self.root / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"bench={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        with open(self.root / "etcd.log", "ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.root / 'etcd.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"etcd not healthy within {timeout} s")
            time.sleep(0.02)

    def _healthy(self) -> bool:
        try:
            url = f"http://{self.endpoint}/health"
            with urllib.request.urlopen(url, timeout=0.5) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """SIGTERM our own process (by its PID), reap it, remove the data directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def prefix_end(prefix: bytes) -> bytes:
    """etcd's ``range_end`` for a prefix (the key after every key starting with it)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class RawEtcd:
    """A gRPC channel to one member with aetcd's stubs, set up like kerna's ``_Conn``."""

    def __init__(self, endpoint: str) -> None:
        self.channel = rpc.insecure_channel(endpoint, options=channel_options())
        self.kv = rpc.KVStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def put(self, key: bytes, value: bytes) -> int:
        """A plain put; returns its revision (used to create fencing claims)."""
        response: Any = await self.kv.Put(
            rpc.PutRequest(key=key, value=value), timeout=CALL_TIMEOUT, metadata=METADATA
        )
        return int(response.header.revision)
