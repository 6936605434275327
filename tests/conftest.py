"""Shared fixtures.

Async tests run on asyncio through anyio's pytest plugin (``pytest.mark.anyio``).
Tests that need a real server skip with the reason when it is missing, except under
``KERNA_REQUIRE_SERVERS=1`` (set by ``.ci/run``), where a skip becomes a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from kerna import Kernel

from .etcd import etcd_cluster, etcd_server  # noqa: F401

REQUIRE_SERVERS = os.environ.get("KERNA_REQUIRE_SERVERS") == "1"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
async def _one_event_loop_for_the_session(anyio_backend: str) -> AsyncIterator[None]:
    """Keep anyio's test runner, and so one event loop, for the whole session.

    gRPC's asyncio layer (the etcd client) delivers the completion of a cancelled call
    some time after the cancel, to the loop that made the call. With a loop per test,
    that loop can already be closed, and gRPC then raises "Event loop is closed" inside
    whichever test runs next. One loop, as in an application, avoids that.
    """
    yield  # noqa: PT022 - the fixture holds the runner open until the session ends


@pytest.fixture
async def kernel() -> AsyncIterator[Kernel]:
    """A running kernel with short timeouts; stopped (and checked for leftovers) after."""
    before = asyncio.all_tasks()
    k = Kernel(ask_timeout=5.0, stop_grace=1.0)
    await k.start()
    try:
        yield k
    finally:
        await k.stop()
        assert_no_stray_tasks(before)


def assert_no_stray_tasks(before: set[asyncio.Task[object]]) -> None:
    """No task that kerna started after ``before`` was taken may be left running."""
    stray = [
        t
        for t in asyncio.all_tasks() - before
        if not t.done() and "/kerna/" in t.get_coro().cr_code.co_filename
    ]
    assert not stray, f"tasks left running: {stray}"


def require_server(reason: str) -> None:
    """Skip (or, under KERNA_REQUIRE_SERVERS=1, fail) a test whose server is missing."""
    if REQUIRE_SERVERS:
        pytest.fail(f"required server missing (KERNA_REQUIRE_SERVERS=1): {reason}")
    pytest.skip(reason)
