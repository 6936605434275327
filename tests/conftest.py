"""Shared fixtures.

Async tests run on asyncio through anyio's pytest plugin (``pytest.mark.anyio``), all on
one session event loop. Every wait in a test is bounded where it waits (an event, a task
or future, a deactivation, a stop, a parked send: ``asyncio.wait_for`` or
``asyncio.timeout``; kerna calls that take a timeout, such as ``ask``, pass one), and
every async test as a whole runs under ``TEST_DEADLINE``: a regression fails its test
instead of hanging the suite.

The real servers (``etcd_server``, ``etcd_cluster``, ``nats_server``, ...) are the
fixtures of kerna's own pytest plugin, ``kerna.testing._pytest_plugin``, which pytest
loads through its entry point. Tests that need a real server or an optional module skip
with the reason when it is missing (``kerna.testing.require_server``,
``require_module``), except under ``KERNA_REQUIRE_SERVERS=1`` (set by ``.ci/run``), where
a skip becomes a failure.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kerna import Kernel
from kerna.state import StateBackend, connect

from .faulty import faulty  # noqa: F401

# Below pytest-timeout's limit (pyproject.toml): that one interrupts the event loop from
# a signal handler, which jams the shared session loop, so pytest never gets to the end.
# This one cancels the test's task on the loop, so the test fails and the suite goes on.
TEST_DEADLINE = 60.0


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

    It takes ``anyio_backend`` so that anyio's plugin sets it up for a sync test too:
    a run of sync test files alone (``pytest tests/test_demo.py``) errors otherwise.
    """
    yield  # noqa: PT022 - the fixture holds the runner open until the session ends


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> None:
    """Run each async test under ``TEST_DEADLINE`` (anyio's plugin then runs it).

    Hypothesis tests are left alone: hypothesis wraps them itself (ours are sync and
    run each example with ``asyncio.run``, on a loop of its own).
    """
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test) or hasattr(test, "hypothesis"):
        return

    @functools.wraps(test)
    async def bounded(**kwargs: Any) -> None:
        before = asyncio.all_tasks()
        try:
            async with asyncio.timeout(TEST_DEADLINE):
                await test(**kwargs)
        except BaseException:
            disown_leftovers(before)
            raise

    pyfuncitem.obj = bounded


def disown_leftovers(before: set[asyncio.Task[Any]]) -> None:
    """What a failed test's futures raised is retrieved here, so that it fails no other
    test: the asks it left unawaited, say.

    Pytest keeps a failed test's frames (``sys.last_traceback``) until the next test
    starts, so its leftovers are garbage collected during a later test; an exception
    never retrieved is then reported to the loop's exception handler, and anyio's
    runner fails whichever test is running with it. So: every future already done
    (nothing else will retrieve a leftover's outcome; awaiting one still raises), and
    the tasks the test started that are still running, once they end. Only after a
    failure: that test is already red.
    """
    for task in asyncio.all_tasks() - before:
        task.add_done_callback(_retrieve)
    for obj in gc.get_objects():
        # The base class's methods: a subclass's done() may act (kerna's RemoteReply
        # cancels itself once its deadline passed).
        if isinstance(obj, asyncio.Future) and asyncio.Future.done(obj):
            _retrieve(obj)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not asyncio.Future.cancelled(future):
        asyncio.Future.exception(future)


@pytest.fixture(params=["memory", "sqlite", "etcd"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateBackend]:
    """A fresh store of each kind (the etcd server is the session's, shared: work under
    a key prefix of the test's own)."""
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("etcd_server").url
    b = await connect(url)
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture
async def kernel() -> AsyncIterator[Kernel]:
    """A running kernel with short timeouts; stopped (and checked for leftovers) after."""
    before = asyncio.all_tasks()
    k = Kernel(ask_timeout=5.0, stop_grace=1.0)
    await k.start()
    try:
        yield k
    finally:
        async with asyncio.timeout(10):  # the grace, then the cancel bound, with room
            await k.stop()
        assert_no_stray_tasks(before)


def task_module(task: asyncio.Task[Any]) -> str:
    """The name of the module that defines the coroutine ``task`` runs ('' if unknown).

    Told by module name, not file path, so it holds however kerna is installed (strict
    or plain editable, wheel). A suspended coroutine's frame names its module; a
    generator-based one's too; a coroutine without a Python frame (a finished one, or a
    compiled one such as gRPC's Cython coroutines) is named by its type's module.
    """
    coro: Any = task.get_coro()
    if coro is None:
        return ""
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    if frame is not None:
        return str(frame.f_globals.get("__name__", ""))
    return str(getattr(type(coro), "__module__", ""))


def assert_no_stray_tasks(before: set[asyncio.Task[Any]]) -> None:
    """No task of kerna's own (see ``task_module``) started after ``before`` was taken
    may be left running.

    Other libraries' tasks are not counted: gRPC, for one, finishes a cancelled call's
    status in a task of its own some time after the channel is closed.
    """
    stray = []
    for task in asyncio.all_tasks() - before:
        module = task_module(task)
        if not task.done() and (module == "kerna" or module.startswith("kerna.")):
            stray.append(task)
    assert not stray, f"tasks left running: {stray}"
