"""Every program in examples/ runs here, as a user would run it: the FastAPI app through
its TestClient (which runs the app's lifespan, so the kernel starts and stops with it),
the Flask app through Flask's test client, the scripts as subprocesses. The frameworks
come with the ``test`` extra; without them the web examples skip (fail under
KERNA_REQUIRE_SERVERS=1)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from examples import event_sourced_account as bank
from kerna import BlockingKernel, Kernel
from kerna.testing import require_module

if TYPE_CHECKING:
    from fastapi.testclient import TestClient
    from flask import Flask

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_INSTALL = "pip install -e '.[test]'"


@pytest.fixture
def shop() -> Callable[[], TestClient]:
    """Makes a TestClient of the FastAPI example; entering it runs the app's lifespan."""
    require_module("fastapi", _INSTALL)
    require_module("httpx2", _INSTALL)
    from fastapi.testclient import TestClient

    from examples.fastapi_app import app

    return lambda: TestClient(app)


@pytest.fixture
def polls() -> Callable[[BlockingKernel], Flask]:
    """The Flask example's app factory."""
    require_module("flask", _INSTALL)
    from examples.flask_app import create_app

    return create_app


def run_example(script: str, *args: str, cwd: Path) -> str:
    """Run ``examples/<script>`` in a fresh interpreter; its stdout (it must succeed)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- FastAPI -----------------------------------------------------------------------------


def test_the_fastapi_app_serves_each_cart_from_its_agent_as_json(
    shop: Callable[[], TestClient],
) -> None:
    with shop() as client:
        assert client.post("/carts/ann/items", json={"sku": "tea", "quantity": 2}).json() == {
            "type": "cart.view",
            "user": "ann",
            "lines": [{"sku": "tea", "quantity": 2}],
            "items": 2,
        }
        client.post("/carts/ann/items", json={"sku": "cake"})
        client.post("/carts/bob/items", json={"sku": "tea", "quantity": 5})
        ann = client.get("/carts/ann")
        assert ann.status_code == 200
        assert ann.headers["content-type"] == "application/json"
        assert ann.json()["lines"] == [
            {"sku": "cake", "quantity": 1},
            {"sku": "tea", "quantity": 2},
        ]
        assert client.get("/carts/bob").json()["items"] == 5
        counters = client.get("/stats").json()["types"]["Cart"]
        assert (counters["handled"], counters["activations"], counters["failed"]) == (5, 2, 0)


def test_the_fastapi_app_answers_a_bad_body_with_422_naming_the_field(
    shop: Callable[[], TestClient],
) -> None:
    with shop() as client:
        bad = client.post("/carts/ann/items", json={"sku": "tea", "quantity": 0})
        assert bad.status_code == 422
        assert "$.quantity" in bad.json()["detail"]
        assert client.post("/carts/ann/items", content=b"{").status_code == 422
        assert client.get("/carts/ann").json()["items"] == 0  # nothing reached the cart


def test_the_fastapi_apps_kernel_lives_as_long_as_its_lifespan(
    shop: Callable[[], TestClient],
) -> None:
    with shop() as client:
        client.post("/carts/ann/items", json={"sku": "tea"})
    with shop() as client:  # a new lifespan, a new kernel (memory:// is private)
        assert client.get("/carts/ann").json()["items"] == 0


# -- Flask on BlockingKernel ---------------------------------------------------------------


def test_the_flask_app_counts_votes_from_many_threads_without_losing_one(
    polls: Callable[[BlockingKernel], Flask],
) -> None:
    with BlockingKernel() as kernel:
        flask_app = polls(kernel)

        def vote(choice: str) -> None:
            client = flask_app.test_client()  # one per thread, as a threaded server has
            for _ in range(25):
                assert client.post("/polls/lunch", json={"choice": choice}).status_code == 200

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(vote, ["soup", "soup", "salad", "pie"]))
        tally = flask_app.test_client().get("/polls/lunch")
        assert tally.json == {
            "type": "poll.tally",
            "poll": "lunch",
            "votes": {"soup": 50, "salad": 25, "pie": 25},
        }
        bad = flask_app.test_client().post("/polls/lunch", json={"choice": ""})
        assert bad.status_code == 422
        assert "$.choice" in bad.text


# -- the durable counter -------------------------------------------------------------------


def test_the_durable_counter_goes_on_where_the_previous_process_stopped(tmp_path: Path) -> None:
    db = tmp_path / "counter.db"
    assert run_example("durable_counter.py", str(db), cwd=tmp_path) == "count: 1\n"
    # a new process, the same file (given relative to the working directory this time)
    assert run_example("durable_counter.py", "counter.db", "--by", "5", cwd=tmp_path) == (
        "count: 6\n"
    )
    assert run_example("durable_counter.py", str(db), cwd=tmp_path) == "count: 7\n"


# -- the event-sourced account -------------------------------------------------------------


def test_the_account_example_prints_balances_and_the_audit_trail(tmp_path: Path) -> None:
    out = run_example("event_sourced_account.py", cwd=tmp_path).splitlines()
    assert out[0] == "refused: __main__.InsufficientFunds: bob has 30, needs 500"
    assert out[1] == "alice: balance 70"
    assert out[2].startswith("  #1 Deposited(amount=100, source='') correlation=")
    assert out[3].startswith("  #2 Withdrawn(amount=30, destination='bob') correlation=")
    assert out[4] == "bob: balance 30"
    assert out[5].startswith("  #1 Deposited(amount=30, source='alice') correlation=")
    assert out[6:] == ["alice as of #1: balance 100"]


@pytest.mark.anyio
async def test_the_accounts_audit_trail_links_a_transfers_events_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'bank.db'}"
    async with Kernel(state=url) as kernel:
        kernel.register(bank.Account)
        await bank.scenario(kernel)
        alice = await bank.audit_trail(kernel, "alice")
        bob = await bank.audit_trail(kernel, "bob")
    assert [(r.seq, r.event) for r in alice] == [
        (1, bank.Deposited(amount=100)),
        (2, bank.Withdrawn(amount=30, destination="bob")),
    ]
    assert [(r.seq, r.event) for r in bob] == [(1, bank.Deposited(amount=30, source="alice"))]
    deposit, withdrawal = alice
    (received,) = bob
    # the transfer is one conversation across both accounts, apart from the first deposit
    assert withdrawal.correlation_id == received.correlation_id != deposit.correlation_id
    # each event names the message that caused it: the transfer on alice's side, the
    # deposit alice sent on bob's
    assert len({deposit.causation_id, withdrawal.causation_id, received.causation_id}) == 3
    async with Kernel(state=url) as kernel:  # a restart replays the logs
        kernel.register(bank.Account)
        for key, amount in (("alice", 70), ("bob", 30)):
            balance = await kernel.ref(bank.Account, key).ask(bank.GetBalance(), timeout=5)
            assert balance == bank.BalanceIs(account=key, amount=amount)
        assert await bank.audit_trail(kernel, "alice") == alice  # the same records
        assert await bank.account_log(kernel, "alice").state_at(1) == (bank.Balance(100), 1)
