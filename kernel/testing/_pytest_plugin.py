"""kerna's pytest plugin (entry point ``pytest11``: loaded by pytest in every project
that has kerna installed; ``-p no:kerna`` turns it off).

It registers fixtures and nothing else: no hooks, no options, no autouse fixture, and
no import of a server's client. A fixture starts its real server only when a test asks
for it; when the server's binary is missing the test is skipped with the reason (how to
install it), or failed under ``KERNA_REQUIRE_SERVERS=1``. Servers listen on free
127.0.0.1 ports with their data in temporary directories (on /dev/shm when present) and
are stopped by PID at teardown.

======================  ========  =============================================
fixture                 scope     yields
======================  ========  =============================================
``etcd_server``         session   ``EtcdMember``: one member, shared (work
                                  under a key prefix of the test's own)
``etcd_cluster``        function  ``EtcdCluster``: three members, fast elections
``nats_server``         session   ``NatsServer``, shared
``fresh_nats_server``   function  ``NatsServer`` of one test (to pause or kill)
``nats_jetstream``      function  ``NatsServer`` started with ``-js``
``redis_server``        function  ``RedisServer`` of one test
``netns``               function  ``Netns``: a network namespace to partition
                                  (root with ip and nft, else a skip)
``node_cluster``        function  ``NodeCluster``: ``await node_cluster.start(
                                  config, 3)`` starts ``kerna node`` processes
                                  on ``etcd_server``
======================  ========  =============================================

Each yields an object with its ``url`` (``etcd://``, ``nats://``, ``redis://``) and the
control methods of ``kerna.testing.ServerProcess``: ``stop``, ``kill``, ``pause``
(SIGSTOP), ``resume`` (SIGCONT), ``restart``, ``ensure_running``. A test that stops or
pauses a session-scoped server calls ``ensure_running()`` when it is done.

``node_cluster`` is a factory, not a started cluster: the config is the test's. ``await
node_cluster.start(config, count)`` (a TOML text or a dict of tables with the node's
``[node] agents`` modules, importable from the test session's working directory) starts
``count`` nodes with distinct ids (``n1``, ``n2``, ...), free transport and HTTP ports,
one cluster name and secret file, and ``etcd_server``'s URL, and returns once all are
ready and see each other as members. Each node (``kerna.testing.NodeProcess``) has its
``url``, ``address``, ``id``, ``pid`` and ``stop()`` (SIGTERM), ``kill()``, ``pause()``,
``resume()``, ``restart()``; the test's event loop runs them (an anyio or asyncio test).
At teardown every node still running is stopped by PID.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from ._etcd import EtcdCluster, EtcdMember, running_etcd, running_etcd_cluster
from ._netns import Netns, netns_unavailable, network_namespace
from ._node import NodeCluster
from ._requires import skip_missing_servers
from ._servers import NatsServer, RedisServer, running_nats, running_redis

__all__ = [
    "etcd_cluster",
    "etcd_server",
    "fresh_nats_server",
    "nats_jetstream",
    "nats_server",
    "netns",
    "node_cluster",
    "redis_server",
]

_T = TypeVar("_T")


def _started(running: contextlib.AbstractContextManager[_T]) -> Iterator[_T]:
    """Run ``running`` around the fixture's yield; a missing binary skips the test."""
    with skip_missing_servers(), running as server:
        yield server


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdMember]:
    """One etcd member for the whole session (tests share it under their own keys).

    A test that stops, kills or pauses it calls ``ensure_running()`` when done.
    """
    yield from _started(running_etcd())


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A fresh three-member etcd cluster for one test (``--heartbeat-interval 50
    --election-timeout 500``); ``members`` and ``leader()`` are controlled one by one."""
    yield from _started(running_etcd_cluster())


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One nats-server for the whole session (tests share it under subjects of their
    own); a test that pauses or stops a server uses ``fresh_nats_server``."""
    yield from _started(running_nats())


@pytest.fixture
def fresh_nats_server() -> Iterator[NatsServer]:
    """A nats-server of one test's own."""
    yield from _started(running_nats())


@pytest.fixture
def nats_jetstream() -> Iterator[NatsServer]:
    """A nats-server with JetStream (``-js``, its store in a temporary directory)."""
    yield from _started(running_nats(jetstream=True))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of one test's own (no persistence; it starts in milliseconds)."""
    yield from _started(running_redis())


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A network namespace joined to this one by a veth pair, with ``partition()`` and
    ``heal()``; skipped with the reason unless root with ``ip`` and ``nft``."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with network_namespace() as ns:
        yield ns


@pytest.fixture
def node_cluster(etcd_server: EtcdMember, tmp_path: Path) -> Iterator[NodeCluster]:
    """A factory of ``kerna node`` clusters on ``etcd_server`` (``await
    node_cluster.start(config, 3)``); its nodes are stopped by PID at teardown."""
    cluster = NodeCluster(tmp_path / "kerna-nodes", etcd_server.url)
    try:
        yield cluster
    finally:
        cluster.stop_all()
