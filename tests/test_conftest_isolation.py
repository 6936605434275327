"""The suite's own harness (tests/conftest.py): a failed test's leftovers fail no other
test. Run by pytest in a project of its own that uses that conftest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = """
from tests.conftest import (  # noqa: F401 - the suite's harness, as it is
    _one_event_loop_for_the_session,
    anyio_backend,
    pytest_pyfunc_call,
)
"""

TESTS = """
import asyncio
import gc

import pytest

pytestmark = pytest.mark.anyio

GATE = asyncio.Event()


async def fails(wait: bool) -> None:
    if wait:
        await GATE.wait()
    raise LookupError("nobody awaits this")


async def test_1_fails_leaving_an_ask_failed_and_one_running_unawaited() -> None:
    done = asyncio.create_task(fails(False))
    running = asyncio.create_task(fails(True), name="left running")
    await asyncio.wait([done])  # it failed; what it raised is not retrieved
    assert not running.done()
    assert done is None  # fails: the frame pytest keeps holds both


async def test_2_runs_next_and_collects_the_garbage() -> None:
    (running,) = [t for t in asyncio.all_tasks() if t.get_name() == "left running"]
    GATE.set()
    await asyncio.wait([running], timeout=5)
    assert running.done()
    del running
    gc.collect()  # the first test's futures, unretrieved, would be reported now
"""


def test_a_failed_tests_leftover_futures_fail_no_other_test(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_leftovers.py").write_text(TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    summary = [line for line in done.stdout.splitlines() if line.startswith(("PASSED", "FAILED"))]
    assert [line.split(" - ")[0] for line in summary] == [
        "PASSED test_leftovers.py::test_2_runs_next_and_collects_the_garbage",
        "FAILED test_leftovers.py::test_1_fails_leaving_an_ask_failed_and_one_running_unawaited",
    ], done.stdout + done.stderr
