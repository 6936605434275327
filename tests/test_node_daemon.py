"""``kerna node`` as a process: probes, metrics, the admin API, the CLI, the token,
logs and the drain on SIGTERM (real processes, sqlite or memory state, real tcp)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest

from kerna import Kernel, TransportError
from kerna.node import NodeHttp, load_config
from kerna.testing import EtcdMember

from .node_agents import Counter, Echo, Ping, Pong, Read
from .node_proc import NodeProcess, free_port, run_cli

pytestmark = pytest.mark.anyio

SECRET = "s3cret"
BASE = """
[node]
cluster = "shop"
id = "n1"
agents = ["tests.node_agents", "tests.node_plain_agents"]
stop_grace = 8
[state]
url = "memory://"
[transport]
url = "tcp://127.0.0.1:0"
secret_file = "secret"
[http]
listen = "127.0.0.1:{port}"
"""


async def call(
    url: str, method: str = "GET", body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=15)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, json=body, headers=headers) as response,
    ):
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text


@pytest.fixture(scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NodeProcess]:
    root = tmp_path_factory.mktemp("node")
    (root / "secret").write_text(SECRET + "\n")
    # a short grace: test_the_admin_api_names_what_was_wrong leaves a handler hanging
    proc = NodeProcess(root, BASE.replace("stop_grace = 8", "stop_grace = 1"))
    await proc.start()
    try:
        yield proc
    finally:
        assert await proc.stop() == 0


async def test_probes_pass_on_a_running_node(node: NodeProcess) -> None:
    status, body = await call(node.url + "/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert 0 <= body["loop_lag"] < body["max_loop_lag"]
    assert await call(node.url + "/readyz") == (200, {"status": "ready"})


async def test_metrics_count_per_agent_type_in_prometheus_text(node: NodeProcess) -> None:
    for n in range(3):
        ask = {"agent_type": "Echo", "key": "m", "message": {"type": "Ping", "n": n}}
        assert (await call(node.url + "/admin/ask", "POST", ask))[0] == 200
    fail = {"agent_type": "Echo", "key": "m", "message": {"type": "Fail", "why": "x"}}
    assert (await call(node.url + "/admin/tell", "POST", fail))[0] == 202
    after = {"agent_type": "Echo", "key": "m", "message": {"type": "Ping", "n": 9}}
    assert (await call(node.url + "/admin/ask", "POST", after))[0] == 200  # FIFO: tell done
    status, text = await call(node.url + "/metrics")
    assert status == 200
    lines = set(text.splitlines())
    assert 'kerna_messages_failed_total{type="Echo"} 1.0' in lines
    assert 'kerna_node_info{cluster="shop",node="n1",version="0.1.0"} 1.0' in lines
    assert 'kerna_agents_active{type="Echo"} 1.0' in lines
    assert any(line.startswith('kerna_messages_handled_total{type="Echo"} ') for line in lines)
    assert 'kerna_queue_depth{type="Echo"} 0.0' in lines
    assert 'kerna_dead_letters_total{type="Echo"} 1.0' not in lines  # a failure, not dead
    assert any(line.startswith('kerna_dead_letters_total{type="Counter"} ') for line in lines)
    assert "# TYPE kerna_messages_handled_total counter" in lines
    assert "# TYPE kerna_queue_depth gauge" in lines
    assert any(line.startswith("kerna_transport_frames_written_total ") for line in lines)
    for counter in ("bytes_written", "frames_read", "bytes_read", "errors"):
        assert any(line.startswith(f"kerna_transport_{counter}_total ") for line in lines)
    assert any(line.startswith("kerna_loop_lag_seconds ") for line in lines)


async def test_the_admin_api_asks_tells_publishes_and_reports_status(node: NodeProcess) -> None:
    url = node.url + "/admin"
    ask = {"agent_type": "Echo", "key": "a", "message": {"type": "Ping", "n": 5}}
    assert await call(url + "/ask", "POST", ask) == (
        200,
        {"reply": {"type": "tests.node_agents.Pong", "n": 5}},
    )
    tell = {"agent_type": "Counter", "key": "api", "message": {"type": "Inc"}}
    assert await call(url + "/tell", "POST", tell) == (202, {"accepted": True})
    read = {"agent_type": "Counter", "key": "api", "message": {"type": "Read"}}
    assert await call(url + "/ask", "POST", read) == (200, {"reply": 1})  # after the tell
    event = {"topic": "events", "message": {"type": "tests.noted", "text": "hi"}}
    assert await call(url + "/publish", "POST", event) == (202, {"accepted": True})
    tally = {"agent_type": "Tally", "key": "all", "message": {"type": "Read"}}
    assert await call(url + "/ask", "POST", tally) == (200, {"reply": 1})
    hello = {"agent_type": "Greeter", "key": "g", "message": {"type": "Hello", "name": "x"}}
    assert await call(url + "/ask", "POST", hello) == (200, {"reply": "hello x"})
    status, body = await call(url + "/status")
    assert status == 200
    assert (body["node"], body["cluster"], body["ready"]) == ("n1", "shop", True)
    assert body["address"].startswith("tcp://127.0.0.1:")
    assert set(body["types"]) == {"Echo", "Counter", "Tally", "Stuck", "Blocker", "Greeter"}
    assert body["types"]["Counter"]["handled"] >= 2
    assert "tests.node_agents.Ping" in body["messages"]


async def test_the_admin_api_names_what_was_wrong(node: NodeProcess) -> None:
    url = node.url + "/admin"
    wrong = {"agent_type": "Echo", "key": "a", "message": {"type": "Ping", "n": "one"}}
    assert await call(url + "/ask", "POST", wrong) == (
        400,
        {"error": "bad_message", "message": "Ping: Expected `int`, got `str` - at `$.n`"},
    )
    status, body = await call(url + "/ask", "POST", {"agent_type": "Echo", "key": "a"})
    assert (status, body["error"]) == (400, "bad_request")
    assert "missing required field `message`" in body["message"]
    unknown = {"agent_type": "Nope", "key": "a", "message": {"type": "Ping", "n": 1}}
    assert (await call(url + "/ask", "POST", unknown))[0] == 404
    failing = {"agent_type": "Echo", "key": "a", "message": {"type": "Fail", "why": "boom"}}
    status, body = await call(url + "/ask", "POST", failing)
    assert status == 500
    assert "boom" in body["message"]
    slow = {"agent_type": "Stuck", "key": "t", "message": {"type": "Hang"}, "timeout": 0.2}
    assert (await call(url + "/ask", "POST", slow))[0] == 504


async def test_the_cli_talks_to_a_running_node(node: NodeProcess) -> None:
    at = ("--node", node.url)
    code, out, err = await run_cli("ask", *at, "Echo", "c", '{"type": "Ping", "n": 7}')
    assert (code, json.loads(out), err) == (0, {"type": "tests.node_agents.Pong", "n": 7}, "")
    code, out, err = await run_cli("ask", *at, "Echo", "c", '{"type": "Ping", "m": 7}')
    assert code == 1
    assert "unknown field $.m (fields: n)" in err
    assert (await run_cli("tell", *at, "Counter", "cli", '{"type": "Inc"}'))[0] == 0
    code, out, _ = await run_cli("ask", *at, "Counter", "cli", '{"type": "Read"}')
    assert (code, out.strip()) == (0, "1")
    assert (await run_cli("publish", *at, "events", '{"type": "tests.noted", "text": "c"}'))[0] == 0
    code, out, _ = await run_cli("status", *at)
    assert code == 0
    assert "node n1 (cluster shop)" in out
    assert any(line.split()[0] == "Counter" for line in out.splitlines()[3:])
    code, out, _ = await run_cli("status", *at, "--json")
    assert json.loads(out)["types"]["Counter"]["handled"] >= 2
    code, _, err = await run_cli("status", "--node", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "cannot reach" in err


async def test_the_cluster_secret_file_reaches_the_transport(node: NodeProcess) -> None:
    _, status = await call(node.url + "/admin/status")
    address = status["address"]
    async with Kernel(transport="tcp://127.0.0.1:0", transport_options={"secret": SECRET}) as k:
        assert await k.ref("Echo", "s", node=address).ask(Ping(n=2), timeout=5) == Pong(n=2)
    async with Kernel(transport="tcp://127.0.0.1:0", transport_options={"secret": "wrong"}) as k:
        with pytest.raises(TransportError):
            await k.ref("Echo", "s", node=address).ask(Ping(n=2), timeout=5)


async def test_log_lines_are_json_with_node_agent_and_correlation_ids(node: NodeProcess) -> None:
    ask = {"agent_type": "Echo", "key": "logged", "message": {"type": "Ping", "n": 42}}
    assert (await call(node.url + "/admin/ask", "POST", ask))[0] == 200
    line = await node.line("pinged 42")
    assert line["node"] == "n1"
    assert line["agent_id"] == "Echo/logged"
    assert isinstance(line["correlation_id"], int)
    assert line["logger"] == "tests.node_agents"
    ready = next(line for line in node.lines if line.get("event") == "ready")
    assert ready["node"] == "n1"


async def test_a_node_bound_beyond_loopback_refuses_admin_calls_without_its_token(
    tmp_path: Path,
) -> None:
    (tmp_path / "secret").write_text(SECRET)
    config = BASE.replace('listen = "127.0.0.1:{port}"', 'listen = "0.0.0.0:{port}"\ntoken = "t0k"')
    proc = NodeProcess(tmp_path, config)
    await proc.start()
    try:
        status = proc.url + "/admin/status"
        missing = await call(status)
        assert missing == (401, {"error": "unauthorized", "message": "missing admin token"})
        wrong = await call(status, token="nope")
        assert wrong == (401, {"error": "unauthorized", "message": "wrong admin token"})
        ask = {"agent_type": "Echo", "key": "a", "message": {"type": "Ping", "n": 1}}
        assert (await call(proc.url + "/admin/ask", "POST", ask))[0] == 401
        assert (await call(status, token="t0k"))[0] == 200
        assert (await call(proc.url + "/readyz"))[0] == 200  # probes need no token
        code, _, err = await run_cli("status", "--node", proc.url)
        assert code == 1
        assert "unauthorized: missing admin token" in err
        code, _, _ = await run_cli("status", "--node", proc.url, "--token", "t0k")
        assert code == 0
    finally:
        assert await proc.stop() == 0


async def test_sigterm_drains_every_accepted_tell_and_exits_0_within_the_grace(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    config = BASE.replace('"memory://"', f'"sqlite:///{db}"').replace(
        '[transport]\nurl = "tcp://127.0.0.1:0"\nsecret_file = "secret"\n', ""
    )
    proc = NodeProcess(tmp_path, config)
    await proc.start()
    accepted = refused = 0
    sigterm_sent = asyncio.Event()
    backlog = asyncio.Event()
    tell = {"agent_type": "Counter", "key": "d", "message": {"type": "Inc", "pause": 0.01}}

    async def sender() -> None:
        # Tells until the node refuses one: before and during the drain. Each 202 is a
        # tell the node accepted and must not lose.
        nonlocal accepted, refused
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            while True:
                try:
                    async with session.post(proc.url + "/admin/tell", json=tell) as response:
                        if response.status != 202:
                            assert response.status == 503, await response.text()
                            refused += 1
                            return
                except aiohttp.ClientConnectionError:
                    assert sigterm_sent.is_set()
                    refused += 1
                    return
                accepted += 1
                if accepted == 100:
                    backlog.set()

    task = asyncio.create_task(sender())
    try:
        async with asyncio.timeout(20):
            await backlog.wait()
        _, status = await call(proc.url + "/admin/status")
        assert status["types"]["Counter"]["queued"] > 10  # a real backlog to drain
        started = time.monotonic()
        proc.send(signal.SIGTERM)
        sigterm_sent.set()
        code = await proc.wait(15)
        elapsed = time.monotonic() - started
        async with asyncio.timeout(10):
            await task
    finally:
        task.cancel()
        await proc.kill()
    assert code == 0
    assert elapsed < 10
    assert refused == 1
    assert proc.event("stopped").is_set()
    async with Kernel(state=f"sqlite:///{db}") as kernel:  # the count the node committed
        kernel.register(Counter)
        assert await kernel.ref(Counter, "d").ask(Read(), timeout=5) == accepted


async def test_healthz_fails_after_the_event_loop_was_blocked(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET)
    config = BASE.replace(
        'listen = "127.0.0.1:{port}"', 'listen = "127.0.0.1:{port}"\nmax_loop_lag = 0.3'
    )
    proc = NodeProcess(tmp_path, config)
    await proc.start()
    try:
        assert (await call(proc.url + "/healthz"))[0] == 200
        block = {"agent_type": "Blocker", "key": "b", "message": {"type": "Block", "seconds": 0.6}}
        assert (await call(proc.url + "/admin/ask", "POST", block))[0] == 200
        status, body = await call(proc.url + "/healthz")
        assert status == 503
        assert body["status"] == "unhealthy"
        assert body["loop_lag"] >= 0.3
    finally:
        assert await proc.stop() == 0


async def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET)
    proc = NodeProcess(tmp_path, BASE.replace("stop_grace = 8", "stop_grace = 60"))
    await proc.start()
    try:
        hang = {"agent_type": "Stuck", "key": "s", "message": {"type": "Hang"}}
        assert (await call(proc.url + "/admin/tell", "POST", hang))[0] == 202
        proc.send(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.event("stopping").wait()
        assert await call(proc.url + "/readyz") == (  # draining: not ready
            503,
            {"status": "unready", "reason": "stopping"},
        )
        started = time.monotonic()
        proc.send(signal.SIGTERM)
        assert await proc.wait(10) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5
    finally:
        await proc.kill()


async def test_readyz_fails_while_the_state_backend_does_not_answer(
    tmp_path: Path, etcd_server: EtcdMember
) -> None:
    config = (
        BASE.replace('"memory://"', f'"{etcd_server.url}"')
        .replace('[transport]\nurl = "tcp://127.0.0.1:0"\nsecret_file = "secret"\n', "")
        .replace('listen = "127.0.0.1:{port}"', 'listen = "127.0.0.1:{port}"\nprobe_timeout = 0.5')
        .replace('cluster = "shop"', 'cluster = "shop"\nlease_ttl = 30')
    )
    proc = NodeProcess(tmp_path, config)
    await proc.start()
    try:
        assert (await call(proc.url + "/readyz"))[0] == 200
        etcd_server.pause()
        try:
            status, body = await call(proc.url + "/readyz")
            assert status == 503
            assert body["reason"] == "the state backend did not answer in 0.5s"
            assert (await call(proc.url + "/healthz"))[0] == 200  # alive, just not ready
        finally:
            etcd_server.resume()
        await asyncio.to_thread(etcd_server.wait_ready)  # the fixture's bounded wait
        assert (await call(proc.url + "/readyz"))[0] == 200  # ready again: the store answers
    finally:
        etcd_server.ensure_running()
        assert await proc.stop() == 0


async def test_kerna_node_lists_every_config_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\ncluster = "shop"\nlease_ttl = 0\n[http]\nlisten = "0.0.0.0:1"\n')
    code, _, err = await run_cli("node", "--config", str(path))
    assert code == 2
    assert "2 problem(s) in the node configuration" in err
    assert f"{path}: [node] lease_ttl: must be a number of seconds > 0, got 0.0" in err
    assert f"{path}: [http] listen: '0.0.0.0' is not a loopback address: a token" in err
    path.write_text('[node]\ncluster = "shop"\nagents = ["tests.node_agents"]\n')
    code, out, _ = await run_cli("node", "--check", "--config", str(path))
    assert (code, out.strip()) == (0, f"kerna node: {path}: configuration OK")


async def test_each_node_has_a_metrics_registry_of_its_own() -> None:
    texts = []
    for node_id, types in (("a", [Echo]), ("b", [Counter])):
        env = {"KERNA_CLUSTER": "c", "KERNA_NODE_ID": node_id, "KERNA_HTTP_LISTEN": "127.0.0.1:0"}
        config = load_config(None, env)
        async with Kernel() as kernel:
            for cls in types:
                kernel.register(cls)
            http = NodeHttp(kernel, config)
            host, port = await http.start()
            try:
                texts.append((await call(f"http://{host}:{port}/metrics"))[1])
            finally:
                await http.close()
    assert 'kerna_agents_active{type="Echo"} 0.0' in texts[0]
    assert 'type="Counter"' not in texts[0]
    assert 'kerna_agents_active{type="Counter"} 0.0' in texts[1]
    assert 'type="Echo"' not in texts[1]
    assert 'node="b"' in texts[1]
    assert "kerna_" not in prometheus_client.generate_latest().decode()  # the global one


async def test_kerna_node_exits_1_naming_an_http_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "node.toml"
        path.write_text(f'[node]\ncluster = "shop"\n[http]\nlisten = "127.0.0.1:{port}"\n')
        code, _, err = await run_cli("node", "--config", str(path))
    assert code == 1
    assert "kerna node: cannot start: OSError: [Errno 98]" in err
    assert f"('127.0.0.1', {port})" in err
