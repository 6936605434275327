"""Real etcd for tests: ``EtcdMember`` (one process) and ``EtcdCluster`` (three members),
started by ``running_etcd`` and ``running_etcd_cluster``.

They run Debian's etcd binary (package etcd-server) on free 127.0.0.1 ports with data
directories on /dev/shm (the system's temp dir where that is missing), ready when
``GET /health`` says true. Elections are fast (``--heartbeat-interval 50
--election-timeout 500``: a new leader in about 0.6 s, a minimum lease TTL of 1 s).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._process import ServerProcess, data_root, find_server, free_ports, wait_until

__all__ = ["FAST_ELECTIONS", "EtcdCluster", "EtcdMember", "running_etcd", "running_etcd_cluster"]

FAST_ELECTIONS = ("--heartbeat-interval", "50", "--election-timeout", "500")


def etcd_binary() -> str:
    """The etcd executable.

    Raises:
        ServerNotInstalled: etcd is not installed.
    """
    return find_server("etcd", "etcd-server", "/usr/bin/etcd")


class EtcdMember(ServerProcess):
    """One etcd process: its ports, data directory and the signals tests send it
    (``stop``, ``kill``, ``pause``, ``resume``, ``restart``: see ``ServerProcess``).

    ``url`` is the ``etcd://`` URL kerna's etcd backend connects to.
    """

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
        super().__init__(root / f"{name}.log")
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = root / name
        self._initial_cluster = initial_cluster
        self._extra_args = tuple(extra_args)
        # Where /health answers over plain HTTP: the client port, or a metrics port
        # when the client port speaks TLS.
        self._health_port = health_port or client_port

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client API."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.endpoint,)

    @property
    def url(self) -> str:
        """``etcd://127.0.0.1:PORT``."""
        return f"etcd://{self.endpoint}"

    def argv(self) -> list[str]:
        scheme = "https" if "--cert-file" in self._extra_args else "http"
        client = f"{scheme}://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            etcd_binary(),
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
        return args

    def ready(self) -> bool:
        return self.healthy()

    def healthy(self, timeout: float = 0.5) -> bool:
        """Whether ``GET /health`` says true (the member is up and has a leader)."""
        import urllib.request  # here: 20 ms, which every pytest session would pay

        url = f"http://127.0.0.1:{self._health_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def status(self, timeout: float = 0.5) -> dict[str, object] | None:
        """The member's ``Maintenance.Status`` (JSON gateway), or None if it does not answer."""
        import urllib.request

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
        """The member's raft id, or None if it does not answer."""
        status = self.status()
        header = status.get("header") if status else None
        return str(header["member_id"]) if isinstance(header, dict) else None


class EtcdCluster:
    """``size`` members (three by default) on 127.0.0.1 with fast elections; each member
    is stopped, killed, paused and restarted on its own (``members``, ``leader()``)."""

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
        """``etcd://a,b,c``: every member's endpoint."""
        return "etcd://" + ",".join(self.endpoints)

    def url_from(self, *first: EtcdMember) -> str:
        """The cluster's URL with ``first`` members first (a backend connects to the
        first endpoint)."""
        order = [*first, *(m for m in self.members if m not in first)]
        return "etcd://" + ",".join(m.endpoint for m in order)

    def start(self) -> None:
        """Start every member (together: each waits for a quorum) and wait for health."""
        for m in self.members:
            m.spawn()
        for m in self.members:
            m.wait_ready()

    def leader(self, timeout: float = 10.0) -> EtcdMember:
        """The current leader, as the running members see it (waits for one).

        Raises:
            TimeoutError: the running members agree on no leader within ``timeout``.
        """
        found: list[EtcdMember] = []

        def elected() -> bool:
            ids = {}
            leaders = set()
            for m in self.members:
                if not m.running or m.paused:
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
        """The members that are not the current leader."""
        leader = self.leader()
        return [m for m in self.members if m is not leader]

    def kill(self) -> None:
        """``kill -9`` every member."""
        for m in self.members:
            m.kill()


@contextlib.contextmanager
def running_etcd(extra_args: Sequence[str] = ()) -> Iterator[EtcdMember]:
    """A one-member etcd, running until the block ends (then killed, its data removed).

    Raises:
        ServerNotInstalled: etcd is not installed.
    """
    etcd_binary()
    root = data_root("kerna-etcd-")
    client, peer = free_ports(2)
    member = EtcdMember("single", root, client, peer, f"single=http://127.0.0.1:{peer}", extra_args)
    try:
        member.start()
        yield member
    finally:
        member.kill()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_etcd_cluster(size: int = 3) -> Iterator[EtcdCluster]:
    """A fresh etcd cluster of ``size`` members, running until the block ends.

    Raises:
        ServerNotInstalled: etcd is not installed.
    """
    etcd_binary()
    root = data_root("kerna-etcd-")
    cluster = EtcdCluster(root, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()
        shutil.rmtree(root, ignore_errors=True)
