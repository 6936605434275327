"""The plugin's ``node_cluster`` fixture: N ``kerna node`` processes from one config on
``etcd_server``, each ready and a member of the others' view when ``start`` returns,
each controlled by PID (kill, pause, resume, restart), all stopped at teardown."""

from __future__ import annotations

import asyncio

import pytest

from kerna.testing import NodeCluster, http_json

from .test_node_daemon import call

pytestmark = pytest.mark.anyio

TTL = 1.5
CONFIG = f"""
[node]
agents = ["tests.node_agents"]
stop_grace = 1
lease_ttl = {TTL}
"""


def pong(n: int) -> dict[str, object]:
    return {"reply": {"type": "tests.node_agents.Pong", "n": n}}


async def test_three_nodes_from_a_config_answer_an_ask_for_an_agent_hosted_on_another(
    node_cluster: NodeCluster,
) -> None:
    nodes = await node_cluster.start(CONFIG, 3)
    assert [n.id for n in nodes] == ["n1", "n2", "n3"]
    assert len({n.pid for n in nodes}) == len({n.url for n in nodes}) == 3
    for node in nodes:
        status, body = await http_json(node.url + "/admin/status")
        assert status == 200
        assert body["node"] == node.id
        assert body["address"] == node.address
        assert {m["id"]: m["address"] for m in body["members"]} == {n.id: n.address for n in nodes}
    ask = {"agent_type": "Echo", "key": "far", "message": {"type": "Ping", "n": 1}}
    assert await call(nodes[0].url + "/admin/ask", "POST", ask) == (200, pong(1))
    lines = [asyncio.create_task(n.line("pinged 1")) for n in nodes]
    done, pending = await asyncio.wait(lines, timeout=10, return_when="FIRST_COMPLETED")
    for task in pending:
        task.cancel()
    assert done, "no node logged the first ping"
    host = nodes[lines.index(done.pop())]
    other = next(n for n in nodes if n is not host)
    ask["message"] = {"type": "Ping", "n": 2}
    assert await call(other.url + "/admin/ask", "POST", ask) == (200, pong(2))
    assert (await host.line("pinged 2"))["node"] == host.id  # routed to the host
    assert not any(e.get("message") == "pinged 2" for e in other.lines)


async def test_a_killed_node_leaves_the_others_members_after_its_lease_ttl(
    node_cluster: NodeCluster,
) -> None:
    nodes = await node_cluster.start(CONFIG, 3)
    n3 = nodes[2]
    await n3.kill()
    assert not n3.running
    await node_cluster.wait_members({"n1", "n2"}, timeout=TTL + 10)
    await n3.restart()
    await node_cluster.wait_members({"n1", "n2", "n3"})


async def test_a_paused_node_answers_nothing_until_resumed(
    node_cluster: NodeCluster,
) -> None:
    (node,) = await node_cluster.start(CONFIG, 1)
    node.pause()
    try:
        with pytest.raises(TimeoutError):
            await http_json(node.url + "/readyz", timeout=0.5)
    finally:
        node.resume()
    assert (await http_json(node.url + "/readyz"))[0] == 200


async def test_teardown_stops_running_and_paused_nodes_by_pid(
    node_cluster: NodeCluster,
) -> None:
    nodes = await node_cluster.start(CONFIG, 2)
    nodes[1].pause()
    node_cluster.stop_all()  # what the fixture's teardown does, outside the loop
    assert [await n.wait(5) for n in nodes] == [0, 0]  # SIGTERM: both drained


async def test_a_config_that_is_not_toml_is_named(node_cluster: NodeCluster) -> None:
    with pytest.raises(ValueError, match="not valid TOML"):
        await node_cluster.start("[node\nagents = 1", 1)
    with pytest.raises(ValueError, match=r"node\.agents = \{"):
        await node_cluster.start({"node": {"agents": {"a": 1}}}, 1)
