"""``kerna deadletters list | replay`` against a node, and the admin API behind it
(``/admin/deadletters``, ``/admin/deadletters/replay``) with the admin token rules."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kerna import Kernel
from kerna.node import NodeHttp, load_config

from .node_obs_agents import Done, Flaky, Heal, Job
from .node_proc import NodeProcess, run_cli
from .test_node_daemon import call

pytestmark = pytest.mark.anyio

TOKEN = "t0k"
CONFIG = f"""
[node]
cluster = "obs"
id = "o1"
agents = ["tests.node_obs_agents"]
stop_grace = 1
[http]
listen = "127.0.0.1:{{port}}"
token = "{TOKEN}"
"""


@pytest.fixture
async def http() -> AsyncIterator[tuple[Kernel, str]]:
    env = {
        "KERNA_CLUSTER": "c",
        "KERNA_NODE_ID": "a",
        "KERNA_HTTP_LISTEN": "127.0.0.1:0",
        "KERNA_HTTP_TOKEN": TOKEN,
    }
    config = load_config(None, env)
    Flaky.broken, Flaky.done = True, []
    async with Kernel() as kernel:
        kernel.register(Flaky)
        node = NodeHttp(kernel, config)
        host, port = await node.start()
        try:
            yield kernel, f"http://{host}:{port}/admin"
        finally:
            await node.close()
            Flaky.broken = True


async def test_the_admin_api_lists_filters_and_replays_dead_letters(
    http: tuple[Kernel, str],
) -> None:
    kernel, url = http
    for n in range(3):
        await kernel.ref(Flaky, "f").tell(Job(n=n))
    await kernel.wait_idle(5)
    assert (await call(url + "/deadletters"))[0] == 401  # the admin token rules
    assert (await call(url + "/deadletters/replay", "POST", {"all": True}))[0] == 401
    status, body = await call(url + "/deadletters?reason=handler_failed&limit=2", token=TOKEN)
    assert status == 200
    assert [r["message"] for r in body["dead_letters"]] == [
        {"type": Job.__struct_config__.tag, "n": 1},
        {"type": Job.__struct_config__.tag, "n": 2},
    ]
    first = body["dead_letters"][0]
    assert (first["target"], first["kind"]) == ("Flaky/f", "tell")
    assert first["error"] == "RuntimeError: job 1: the model is down"
    assert body["stats"] == {
        "kept": 3,
        "capacity": 1000,
        "evicted": 0,
        "recorded": {"handler_failed": 3},
    }
    status, body = await call(url + "/deadletters?type=Other", token=TOKEN)
    assert (status, body["dead_letters"]) == (200, [])
    status, body = await call(url + "/deadletters?limit=x", token=TOKEN)
    assert (status, body["error"]) == (400, "bad_request")
    status, body = await call(url + "/deadletters?colour=red", token=TOKEN)
    assert status == 400
    assert "colour" in body["message"]
    status, body = await call(url + "/deadletters/replay", "POST", {}, token=TOKEN)
    assert status == 400
    assert "all: true" in body["message"]

    await kernel.ref(Flaky, "f").tell(Heal())
    status, body = await call(url + "/deadletters/replay", "POST", {"all": True}, token=TOKEN)
    assert (status, len(body["replayed"]), body["failed"]) == (200, 3, {})
    assert await kernel.ref(Flaky, "f").ask(Done(), timeout=5) == [0, 1, 2]
    assert kernel.dead_letters() == []


async def test_kerna_deadletters_lists_and_replays_on_a_node_process(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, CONFIG)
    await node.start()
    try:
        at = ("--node", node.url, "--token", TOKEN)
        for n in range(4):
            tell = {"agent_type": "Flaky", "key": "f", "message": {"type": "Job", "n": n}}
            assert (await call(node.url + "/admin/tell", "POST", tell, token=TOKEN))[0] == 202
        done = {"agent_type": "Flaky", "key": "f", "message": {"type": "Done"}}
        assert await call(node.url + "/admin/ask", "POST", done, token=TOKEN) == (
            200,
            {"reply": []},
        )  # the mailbox is FIFO: the four jobs have failed by now

        code, out, err = await run_cli("deadletters", "list", "--node", node.url)
        assert code == 1
        assert "unauthorized: missing admin token" in err
        code, out, err = await run_cli("deadletters", "list", *at)
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert len(lines) == 5
        assert lines[-1] == "4 kept (of 1000), 0 evicted"
        assert "handler_failed" in lines[0]
        assert "Flaky/f" in lines[0]
        assert "RuntimeError: job 0: the model is down" in lines[0]
        code, out, _ = await run_cli("deadletters", "list", *at, "--json", "--limit", "1")
        [record] = json.loads(out)["dead_letters"]
        assert record["message"]["n"] == 3

        code, _, err = await run_cli("deadletters", "replay", *at)
        assert code == 2
        assert "--all" in err
        heal = {"agent_type": "Flaky", "key": "f", "message": {"type": "Heal"}}
        assert (await call(node.url + "/admin/tell", "POST", heal, token=TOKEN))[0] == 202
        code, out, err = await run_cli("deadletters", "replay", *at, "--seq", str(record["seq"]))
        assert (code, out.strip(), err) == (0, "replayed 1", "")
        code, out, err = await run_cli("deadletters", "replay", *at, "--reason", "handler_failed")
        assert (code, out.strip()) == (0, "replayed 3")
        assert await call(node.url + "/admin/ask", "POST", done, token=TOKEN) == (
            200,
            {"reply": [0, 1, 2, 3]},
        )
        code, out, _ = await run_cli("deadletters", "list", *at)
        assert out.strip() == "0 kept (of 1000), 0 evicted"
    finally:
        assert await node.stop() == 0
