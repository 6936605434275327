"""kerna.testing: helpers for the tests of kerna's users and extension authors.

- ``StateBackendSuite``: the conformance suite of ``kerna.state.StateBackend``, the one
  kerna's own backends pass; a third-party backend runs it by subclassing it in its
  tests (``help(StateBackendSuite)`` shows how). It needs pytest (the ``test`` extra);
  it is imported on first use, so ``import kerna.testing`` alone does not import pytest.
  A class to subclass rather than a pytest plugin (anyio's way for its harness): the
  backend author says which store it runs on, and nothing is registered in the pytest
  session of every project that merely has kerna installed.
- ``TransportSuite``: the conformance suite of ``kerna.transports.Transport``, which
  kerna's transports pass; a third-party transport subclasses it the same way
  (``help(TransportSuite)``: a ``make_transport`` factory fixture is all it needs).
  Imported on first use too.
- ``VirtualClock``: virtual time for a kernel's event loop (trio's ``MockClock``), so
  that timers, ask timeouts, idle deactivation and restart backoff take no real time
  and happen the same way every run (``help(VirtualClock)`` shows how).
- ``watch_events``: the first events of a watch, bounded by a timeout.
- Real servers (``running_etcd``, ``running_etcd_cluster``, ``running_nats``,
  ``running_redis``; ``EtcdMember``, ``EtcdCluster``, ``NatsServer``, ``RedisServer``,
  all ``ServerProcess``): started on free 127.0.0.1 ports in temporary directories,
  controlled by PID (stop, kill, pause, resume, restart). The pytest plugin
  (``kerna.testing._pytest_plugin``, loaded through the ``pytest11`` entry point)
  wraps them in fixtures: ``etcd_server``, ``etcd_cluster``, ``nats_server``,
  ``fresh_nats_server``, ``nats_jetstream``, ``redis_server``, ``netns``.
- ``NodeProcess``: one ``kerna node`` process (its config, its JSON log lines, signals);
  ``NodeCluster``: N of them from one config on one etcd (the ``node_cluster`` fixture).
- Faults: ``FaultProxy`` (a TCP proxy with delay, reset, blackhole, drip and heal),
  ``fault_proxy`` (the same through toxiproxy when ``TOXIPROXY_URL`` is set),
  ``pause_process``, ``resume_process``, ``kill_process``, ``wait_for_exit``, and
  ``network_namespace`` (``ip netns`` + ``nft`` partitions, root only).
- ``require_server``, ``require_module``, ``skip_missing_servers``: skip a test whose
  server or module is missing (a failure under ``KERNA_REQUIRE_SERVERS=1``). They need
  pytest.
"""

import importlib
import typing

from ._clock import VirtualClock
from ._etcd import EtcdCluster, EtcdMember, running_etcd, running_etcd_cluster
from ._netns import Netns, netns_unavailable, network_namespace
from ._node import NodeCluster, NodeProcess, http_json
from ._process import (
    DATA_ROOT_ENV,
    ServerNotInstalled,
    ServerProcess,
    data_root,
    free_ports,
    kill_process,
    pause_process,
    resume_process,
    wait_for_exit,
    wait_until,
)
from ._proxy import FaultProxy
from ._servers import NatsServer, RedisServer, running_nats, running_redis
from ._toxiproxy import ToxiproxyFaults, fault_proxy
from ._watch import watch_events

if typing.TYPE_CHECKING:
    from ._requires import require_module, require_server, skip_missing_servers
    from ._state_suite import StateBackendSuite
    from ._transport_suite import TransportFactory, TransportSuite

__all__ = [
    "DATA_ROOT_ENV",
    "EtcdCluster",
    "EtcdMember",
    "FaultProxy",
    "NatsServer",
    "Netns",
    "NodeCluster",
    "NodeProcess",
    "RedisServer",
    "ServerNotInstalled",
    "ServerProcess",
    "StateBackendSuite",
    "ToxiproxyFaults",
    "TransportFactory",
    "TransportSuite",
    "VirtualClock",
    "data_root",
    "fault_proxy",
    "free_ports",
    "http_json",
    "kill_process",
    "netns_unavailable",
    "network_namespace",
    "pause_process",
    "require_module",
    "require_server",
    "resume_process",
    "running_etcd",
    "running_etcd_cluster",
    "running_nats",
    "running_redis",
    "skip_missing_servers",
    "wait_for_exit",
    "wait_until",
    "watch_events",
]

# names whose module needs pytest: imported on first use
_NEEDS_PYTEST = {
    "StateBackendSuite": "_state_suite",
    "TransportFactory": "_transport_suite",
    "TransportSuite": "_transport_suite",
    "require_module": "_requires",
    "require_server": "_requires",
    "skip_missing_servers": "_requires",
}

if not typing.TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name

    def __getattr__(name: str) -> object:
        module = _NEEDS_PYTEST.get(name)
        if module is None:
            raise AttributeError(f"module 'kerna.testing' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
