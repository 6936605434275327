"""Circuit breakers, retries and fallbacks of a kernel's ``Resilience`` on a node's
``/metrics`` and ``/admin/status``, and as ``kerna top`` shows them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kerna import Agent, Kernel, Request, handler
from kerna._top import render
from kerna.node import NodeHttp, load_config
from kerna.plugins import Breaker, Failed, Policy, Resilience, Retry, idempotent, resilience_stats

from .test_node_daemon import call
from .test_top import row, status, text_of, type_stats

pytestmark = pytest.mark.anyio


@idempotent
class Lookup(Request[str]):
    pass


class Down(Agent):
    @handler
    async def lookup(self, msg: Lookup) -> str:
        raise ConnectionError("down")


async def cached_answer(failed: Failed) -> str:
    return "stale"


def resilience() -> Resilience:
    flaky = Policy(
        retry=Retry(on=(ConnectionError,), max_retries=1, interval=0.001),
        breaker=Breaker(failures=2, reset_timeout=60),
        fallback=cached_answer,
    )
    return Resilience(
        policies={"flaky": flaky, "guarded": Policy(breaker=Breaker(failures=3))},
        targets={Down: "flaky", "search": "guarded"},
    )


@pytest.fixture
async def node() -> AsyncIterator[tuple[Kernel, str]]:
    env = {"KERNA_CLUSTER": "c", "KERNA_NODE_ID": "a", "KERNA_HTTP_LISTEN": "127.0.0.1:0"}
    async with Kernel(middleware=[resilience()]) as kernel:
        kernel.register(Down)
        http = NodeHttp(kernel, load_config(None, env))
        host, port = await http.start()
        try:
            yield kernel, f"http://{host}:{port}"
        finally:
            await http.close()


async def trip(kernel: Kernel) -> None:
    """Two asks: the first fails twice (a retry), which opens the breaker; the second
    is refused by it; both get the fallback's answer."""
    ref = kernel.ref(Down, "d")
    assert [await ref.ask(Lookup()), await ref.ask(Lookup())] == ["stale", "stale"]


async def test_resilience_stats_name_every_target_with_its_breaker_state(
    node: tuple[Kernel, str],
) -> None:
    kernel, _ = node
    await trip(kernel)
    stats = resilience_stats(kernel)
    assert sorted(stats) == ["Down", "search"]
    down = stats["Down"]
    assert (down.calls, down.attempts, down.retries, down.fallbacks) == (2, 2, 1, 2)
    assert down.breaker is not None
    assert (down.breaker.state, down.breaker.opened, down.breaker.rejected) == ("open", 1, 1)
    search = stats["search"].breaker  # never called: closed, nothing counted
    assert search is not None
    assert (search.state, search.calls) == ("closed", 0)


async def test_a_kernel_without_resilience_has_no_resilience_stats() -> None:
    async with Kernel() as kernel:
        assert resilience_stats(kernel) == {}


async def test_metrics_export_breaker_states_openings_retries_and_fallbacks(
    node: tuple[Kernel, str],
) -> None:
    kernel, url = node
    await trip(kernel)
    lines = set((await call(url + "/metrics"))[1].splitlines())
    assert "# TYPE kerna_breaker_state gauge" in lines
    assert 'kerna_breaker_state{target="Down"} 2.0' in lines  # open
    assert 'kerna_breaker_state{target="search"} 0.0' in lines  # closed
    assert 'kerna_breaker_openings_total{target="Down"} 1.0' in lines
    assert 'kerna_breaker_rejected_total{target="Down"} 1.0' in lines
    assert 'kerna_breaker_openings_total{target="search"} 0.0' in lines
    assert 'kerna_resilience_calls_total{target="Down"} 2.0' in lines
    assert 'kerna_resilience_attempts_total{target="Down"} 2.0' in lines
    assert 'kerna_retries_total{target="Down"} 1.0' in lines
    assert 'kerna_fallbacks_total{target="Down"} 2.0' in lines
    assert 'kerna_fallback_failures_total{target="Down"} 0.0' in lines


async def test_admin_status_lists_the_targets_and_top_shows_the_open_breaker(
    node: tuple[Kernel, str],
) -> None:
    kernel, url = node
    await trip(kernel)
    code, body = await call(url + "/admin/status")
    assert code == 200
    targets = body["resilience"]
    assert (targets["Down"]["retries"], targets["Down"]["breaker"]["state"]) == (1, "open")
    assert targets["search"]["breaker"]["state"] == "closed"
    text = text_of(render(None, body, 1.0)).split("resilience targets")[1]
    assert row(text, "Down")[:3] == ["Down", "open", "1"]
    assert row(text, "search")[:3] == ["search", "closed", "0"]


def target(state: str | None, opened: int, rejected: int, retries: int, fallbacks: int) -> dict:
    breaker = None
    if state is not None:
        breaker = {
            "state": state, "failures": 0, "calls": 4, "rejected": rejected, "opened": opened,
            "half_opened": 0, "closed": 0,
        }  # fmt: skip
    return {
        "calls": 9, "attempts": 9, "retries": retries, "fallbacks": fallbacks,
        "fallback_failures": 0, "breaker": breaker, "bulkhead": None,
    }  # fmt: skip


def test_top_shows_breaker_states_openings_and_rates() -> None:
    before = {
        **status({"Model": type_stats()}, {}),
        "resilience": {"openai": target("closed", 0, 0, 2, 0)},
    }
    after = {
        **status({"Model": type_stats()}, {}),
        "resilience": {
            "openai": target("open", 1, 10, 6, 10),
            "Ranker": target("half-open", 3, 0, 0, 0),
            "db": target(None, 0, 0, 4, 0),  # no breaker: retries only
        },
    }
    text = text_of(render(before, after, 2.0))
    assert row(text, "openai") == ["openai", "open", "1", "5.0", "2.0", "5.0"]
    assert row(text, "Ranker") == ["Ranker", "half-open", "3", "-", "-", "-"]
    assert row(text, "db") == ["db", "-", "-", "-", "-", "-"]
    assert row(text, "Model")[0] == "Model"  # the types' table is still there


def test_top_without_resilience_shows_no_target_table() -> None:
    text = text_of(render(None, status({"Model": type_stats()}, {}), 1.0))
    assert "BREAKER" not in text


def test_two_targets_of_one_name_are_refused() -> None:
    from kerna import ConfigError

    with pytest.raises(ConfigError, match="two targets have the same name: Down"):
        Resilience(policies={"p": Policy()}, targets={Down: "p", "Down": "p"})


async def test_a_node_without_resilience_exports_no_target_series() -> None:
    env = {"KERNA_CLUSTER": "c", "KERNA_NODE_ID": "a", "KERNA_HTTP_LISTEN": "127.0.0.1:0"}
    async with Kernel() as kernel:
        kernel.register(Down)
        http = NodeHttp(kernel, load_config(None, env))
        host, port = await http.start()
        try:
            text = (await call(f"http://{host}:{port}/metrics"))[1]
            status_body = (await call(f"http://{host}:{port}/admin/status"))[1]
        finally:
            await http.close()
    assert "kerna_breaker" not in text
    assert "kerna_retries" not in text
    assert "kerna_messages_handled_total" in text
    assert status_body["resilience"] == {}
