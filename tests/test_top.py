"""``kerna top``: its frame from two status reads (rates, interval latency quantiles),
and one frame from a live node process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kerna._top import render

from .node_proc import NodeProcess, run_cli
from .test_node_daemon import call

pytestmark = pytest.mark.anyio

BOUNDS = [0.001, 0.01, 0.1]


def type_stats(**counts: int) -> dict[str, int]:
    base = dict.fromkeys(
        ("active", "queued", "in_flight", "pending", "handled", "failed", "dead_letters"), 0
    )
    return {**base, **counts}


def histogram(*counts: int) -> dict[str, Any]:
    return {"bounds": BOUNDS, "counts": list(counts), "count": sum(counts), "sum": 0.0}


def status(types: dict[str, Any], timings: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": "n1",
        "cluster": "shop",
        "ready": True,
        "members": [{"node": "n1"}],
        "handlers_running": 2,
        "dead_letters": 1,
        "dead_letter_store": {"kept": 3, "capacity": 1000, "evicted": 0, "recorded": {}},
        "types": types,
        "timings": timings,
    }


def text_of(renderable: Any) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(renderable)
    return console.export_text()


def row(text: str, name: str) -> list[str]:
    [line] = [ln for ln in text.splitlines() if ln.strip("│┃ ").startswith(name + " ")]
    return [cell.strip() for cell in line.strip("│┃").split("│")]


def test_a_frame_shows_rates_and_the_latency_of_the_last_interval() -> None:
    before = status(
        {"Model": type_stats(handled=100, failed=1), "Idle": type_stats()},
        {"Model": {"wait": histogram(10, 0, 0, 0), "handling": histogram(0, 10, 0, 0)}},
    )
    after = status(
        {
            "Model": type_stats(
                active=2, queued=5, in_flight=2, pending=7, handled=300, failed=5, dead_letters=4
            ),
            "Idle": type_stats(),
        },
        # in the interval: 100 waits, 98 under 1 ms and 2 under 100 ms; 100 handlings
        # under 10 ms, nothing slower
        {"Model": {"wait": histogram(108, 0, 2, 0), "handling": histogram(0, 110, 0, 0)}},
    )
    text = text_of(render(before, after, 2.0))
    title = "node n1 (cluster shop) ready · 1 members · 2 handlers running · 3 dead letters kept"
    assert title in text
    cells = row(text, "Model")
    assert cells[:8] == ["Model", "2", "5", "2", "7", "100.0", "2.0", "4"]
    assert cells[8:] == ["≤1ms", "≤100ms", "≤10ms", "≤10ms"]
    assert row(text, "Idle")[5:] == ["0.0", "0.0", "0", "-", "-", "-", "-"]


def test_the_first_frame_has_no_rates_yet() -> None:
    now = status({"Model": type_stats(handled=5)}, {})
    cells = row(text_of(render(None, now, 1.0)), "Model")
    assert cells[5:7] == ["-", "-"]
    assert cells[8:] == ["-"] * 4


async def test_kerna_top_once_shows_a_live_nodes_types(tmp_path: Path) -> None:
    token = "t0k"
    config = f"""
[node]
cluster = "top"
id = "t1"
agents = ["tests.node_obs_agents"]
stop_grace = 1
timing = 1
[http]
listen = "127.0.0.1:{{port}}"
token = "{token}"
"""
    node = NodeProcess(tmp_path, config)
    await node.start()
    try:
        for n in range(5):
            tell = {"agent_type": "Flaky", "key": "f", "message": {"type": "Job", "n": n}}
            assert (await call(node.url + "/admin/tell", "POST", tell, token=token))[0] == 202
        done = {"agent_type": "Flaky", "key": "f", "message": {"type": "Done"}}
        assert (await call(node.url + "/admin/ask", "POST", done, token=token))[0] == 200
        at = ("--node", node.url, "--token", token)
        code, out, err = await run_cli("top", *at, "--once", "--interval", "0.2")
        assert (code, err) == (0, "")
        assert "node t1 (cluster top) ready" in out
        assert "5 dead letters kept" in out
        flaky = [line for line in out.splitlines() if "Flaky" in line]
        assert len(flaky) == 1
        assert any("Gate" in line for line in out.splitlines())
        code, _, err = await run_cli("top", "--node", node.url, "--once", "--interval", "0.1")
        assert code == 1
        assert "unauthorized: missing admin token" in err
        status = json.loads((await run_cli("status", *at, "--json"))[1])
        assert status["timings"]["Flaky"]["handling"]["count"] == 6  # timing = 1: every one
    finally:
        assert await node.stop() == 0
