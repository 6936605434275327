"""kerna's pytest plugin (``kerna.testing._pytest_plugin``): each fixture starts a real
server that answers and that the control methods act on; the plugin loads through its
``pytest11`` entry point in a project of its own, registers nothing a test did not ask
for, and a missing server is a skip (a failure under ``KERNA_REQUIRE_SERVERS=1``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from kerna import Unavailable
from kerna.state import connect
from kerna.testing import EtcdCluster, EtcdMember, NatsServer, RedisServer
from kerna.testing import _pytest_plugin as plugin

pytestmark = pytest.mark.anyio


def _redis(server: RedisServer, *commands: bytes, timeout: float = 2.0) -> bytes:
    """Send RESP inline ``commands`` on a raw socket; the replies, read until complete."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(b"".join(c + b"\r\n" for c in commands))
        data = b""
        while data.count(b"\r\n") < len(commands) + sum(c.startswith(b"GET") for c in commands):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


async def test_etcd_server_stores_and_reads_through_the_kerna_backend(
    etcd_server: EtcdMember,
) -> None:
    assert etcd_server.url == f"etcd://127.0.0.1:{etcd_server.client_port}"
    backend = await connect(etcd_server.url, timeout=2.0)
    try:
        rev = await backend.put("plugin/etcd/k", b"v1")
        kv = await backend.get("plugin/etcd/k")
        assert kv is not None
        assert (kv.value, kv.mod_revision) == (b"v1", rev)
    finally:
        await backend.aclose()


async def test_a_three_member_etcd_cluster_serves_after_its_leader_is_killed(
    etcd_cluster: EtcdCluster,
) -> None:
    assert len(etcd_cluster.members) == 3
    leader = etcd_cluster.leader()
    backend = await connect(etcd_cluster.url_from(*etcd_cluster.followers()), timeout=2.0)
    try:
        await backend.put("plugin/cluster/before", b"1")
        leader.kill()
        assert not leader.running
        new_leader = etcd_cluster.leader(timeout=10)
        assert new_leader is not leader
        await backend.put("plugin/cluster/after", b"2")  # the two survivors are a quorum
        after = await backend.get("plugin/cluster/after")
        assert after is not None
        assert after.value == b"2"
        leader.start()  # back on its own ports and data: it rejoins
        assert leader.healthy()
    finally:
        await backend.aclose()


async def test_a_paused_etcd_member_answers_nothing_until_resumed(
    etcd_server: EtcdMember,
) -> None:
    etcd_server.pause()
    try:
        assert etcd_server.paused
        assert etcd_server.status(timeout=0.3) is None
        with pytest.raises(Unavailable):
            await connect(etcd_server.url, timeout=0.5)
    finally:
        etcd_server.resume()
    assert not etcd_server.paused
    assert etcd_server.status(timeout=2.0) is not None


async def test_nats_server_delivers_what_is_published_to_a_subscriber(
    nats_server: NatsServer,
) -> None:
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    nc = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    try:
        sub = await nc.subscribe("plugin.nats")
        await nc.publish("plugin.nats", b"hello")
        msg = await sub.next_msg(timeout=2)
        assert msg.data == b"hello"
    finally:
        await nc.close()


async def test_nats_jetstream_acknowledges_a_stored_message(nats_jetstream: NatsServer) -> None:
    nc = await nats.connect(nats_jetstream.url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=2)
        await js.add_stream(name="PLUGIN", subjects=["plugin.js"])
        ack = await js.publish("plugin.js", b"kept")
        assert (ack.stream, ack.seq) == ("PLUGIN", 1)
    finally:
        await nc.close()


def test_redis_server_answers_and_obeys_pause_kill_and_restart(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"
    assert _redis(redis_server, b"PING") == b"+PONG\r\n"
    assert _redis(redis_server, b"SET k v", b"GET k") == b"+OK\r\n$1\r\nv\r\n"
    redis_server.pause()
    with pytest.raises(TimeoutError):
        _redis(redis_server, b"PING", timeout=0.3)
    redis_server.resume()
    assert _redis(redis_server, b"PING") == b"+PONG\r\n"
    redis_server.kill()
    with pytest.raises(ConnectionRefusedError):
        _redis(redis_server, b"PING")
    redis_server.restart()
    assert _redis(redis_server, b"PING") == b"+PONG\r\n"


def test_the_plugin_registers_fixtures_and_no_hook() -> None:
    hooks = [name for name in vars(plugin) if name.startswith("pytest_")]
    assert hooks == []


PROJECT_TESTS = """
import socket


def test_redis_answers(redis_server):
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2) as s:
        s.sendall(b"PING\\r\\n")
        assert s.recv(7) == b"+PONG\\r\\n"


def test_etcd_is_healthy(etcd_server):
    assert etcd_server.url.startswith("etcd://127.0.0.1:")
    assert etcd_server.healthy()


def test_nothing_of_kerna_is_used_unasked(request):
    assert request.fixturenames == ["request"]
"""


def _pytest_in(project: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if k != "KERNA_REQUIRE_SERVERS"}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *args],
        cwd=project,
        env={**environment, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_project_gets_the_fixtures_through_the_entry_point(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_servers.py").write_text(PROJECT_TESTS)
    missing = {"KERNA_REDIS_SERVER_BIN": str(tmp_path / "no-redis-here")}
    # Four runs at once: each is mostly interpreter start-up and imports.
    runs = {
        "normal": _pytest_in(project),
        "missing": _pytest_in(project, "-k", "redis", **missing),
        "required": _pytest_in(project, "-k", "redis", **missing, KERNA_REQUIRE_SERVERS="1"),
        "disabled": _pytest_in(project, "-p", "no:kerna", "-k", "redis"),
    }
    out = {}
    for name, proc in runs.items():
        out[name], _ = proc.communicate(timeout=120)
    assert "3 passed" in out["normal"], out["normal"]
    assert "1 skipped" in out["missing"], out["missing"]
    assert "KERNA_REDIS_SERVER_BIN" in out["missing"], out["missing"]
    assert "1 error" in out["required"], out["required"]
    assert "KERNA_REQUIRE_SERVERS=1" in out["required"], out["required"]
    assert "fixture 'redis_server' not found" in out["disabled"], out["disabled"]


PROJECT_AGENTS = """
from kerna import Agent, Request, handler


class Hello(Request[str]):
    name: str


class Greeter(Agent):
    @handler
    async def hello(self, msg: Hello) -> str:
        return "hello " + msg.name


def setup(kernel):
    kernel.register(Greeter)
"""

PROJECT_NODE_TESTS = """
import pytest

from kerna.testing import http_json

pytestmark = pytest.mark.anyio


async def test_two_nodes_see_each_other(node_cluster):
    nodes = await node_cluster.start({"node": {"agents": ["greeters"], "stop_grace": 1}}, 2)
    for node in nodes:
        status, body = await http_json(node.url + "/admin/status")
        assert status == 200
        assert {m["id"] for m in body["members"]} == {"n1", "n2"}
        assert body["members"][0]["types"]["Greeter"] == "directory"
"""


def test_a_project_starts_a_node_cluster_of_its_own_agents(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "greeters.py").write_text(PROJECT_AGENTS)
    (project / "test_nodes.py").write_text(PROJECT_NODE_TESTS)
    proc = _pytest_in(project)
    out, _ = proc.communicate(timeout=120)
    assert "1 passed" in out, out
