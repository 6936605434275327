"""Real nats-server and redis-server for tests: ``NatsServer`` and ``RedisServer``,
started by ``running_nats`` and ``running_redis``.

Each runs Debian's binary (packages nats-server, redis-server) on a free 127.0.0.1
port with its files in a temporary directory (on /dev/shm when present); it is ready
when it answers (nats: its ``INFO`` greeting after "Server is ready" in its own log;
redis: ``PING`` answered ``+PONG``). When the free port was taken between choosing it
and the server binding it, the server is started again on another one.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ._process import ServerProcess, data_root, find_server, free_ports

__all__ = ["MAX_PAYLOAD", "NatsServer", "RedisServer", "running_nats", "running_redis"]

MAX_PAYLOAD = 8 * 1024 * 1024
"""nats-server's ``max_payload`` here: 8 MiB (the server's default is 1 MiB)."""

_S = TypeVar("_S", bound=ServerProcess)


def nats_binary() -> str:
    """The nats-server executable.

    Raises:
        ServerNotInstalled: nats-server is not installed.
    """
    return find_server("nats-server", "nats-server", "/usr/sbin/nats-server")


def redis_binary() -> str:
    """The redis-server executable.

    Raises:
        ServerNotInstalled: redis-server is not installed.
    """
    return find_server("redis-server", "redis-server", "/usr/bin/redis-server")


class NatsServer(ServerProcess):
    """One nats-server: ``url`` is ``nats://127.0.0.1:PORT``; with ``jetstream`` it runs
    with ``-js`` and its store in its directory. ``extra_config`` is added to its
    configuration file (authorization, tls)."""

    name = "nats-server"

    def __init__(
        self,
        root: Path,
        *,
        jetstream: bool = False,
        max_payload: int = MAX_PAYLOAD,
        extra_config: str = "",
    ) -> None:
        super().__init__(root / "nats.log")
        (self.port,) = free_ports(1)
        self.root = root
        self.jetstream = jetstream
        self.max_payload = max_payload
        self.config = root / "nats.conf"
        self.log_path.write_text("")
        # max_pending (64 MB by default) bounds max_payload: keep it above.
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"max_payload: {max_payload}\n"
            f"max_pending: {max(64 * 1024 * 1024, 2 * max_payload)}\n"
            f"{extra_config}\n"
        )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        args = [nats_binary(), "-c", str(self.config)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.root / "jetstream")]
        return args

    def ready(self) -> bool:
        # Its own log, not only a greeting on the port: another process's server may
        # have taken the port between free_ports and this bind.
        return "Server is ready" in self.log_tail(200) and self.greets()

    def greets(self, timeout: float = 0.5) -> bool:
        """Whether the server sends its ``INFO`` line on a new connection."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                return s.recv(5) == b"INFO "
        except OSError:
            return False


class RedisServer(ServerProcess):
    """One redis-server without persistence: ``url`` is ``redis://127.0.0.1:PORT``."""

    name = "redis-server"

    def __init__(self, root: Path) -> None:
        super().__init__(root / "redis.log")
        (self.port,) = free_ports(1)
        self.root = root

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.root),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip

    def ready(self) -> bool:
        return self.ping()

    def ping(self, timeout: float = 0.5) -> bool:
        """Whether the server answers ``PING`` with ``+PONG``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                s.sendall(b"PING\r\n")
                return s.recv(7) == b"+PONG\r\n"
        except OSError:
            return False


def _start_retrying(make: Callable[[], _S]) -> _S:
    """Start ``make()``; once more on another port when the one chosen was taken."""
    for attempt in range(3):
        server = make()
        try:
            server.start()
            return server
        except RuntimeError:
            server.kill()
            if attempt == 2 or "address already in use" not in server.log_tail().lower():
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def running_nats(
    *, jetstream: bool = False, extra_config: str = "", root: Path | None = None
) -> Iterator[NatsServer]:
    """A nats-server (``-js`` with ``jetstream``; ``extra_config`` added to its
    configuration) in ``root`` (a new temporary directory if None), running until the
    block ends; then stopped and its directory removed.

    Raises:
        ServerNotInstalled: nats-server is not installed.
    """
    nats_binary()
    root = root or data_root("kerna-nats-")
    servers: list[NatsServer] = []

    def make() -> NatsServer:
        servers.append(NatsServer(root, jetstream=jetstream, extra_config=extra_config))
        return servers[-1]

    try:
        yield _start_retrying(make)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A redis-server running until the block ends; then stopped, its directory removed.

    Raises:
        ServerNotInstalled: redis-server is not installed.
    """
    redis_binary()
    root = data_root("kerna-redis-")
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        servers.append(RedisServer(root))
        return servers[-1]

    try:
        yield _start_retrying(make)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
