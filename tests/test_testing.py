"""``kerna.testing`` as a third party uses it: the state backend suite, run by pytest in
a project of its own (no kerna conftest), against a good backend and a broken one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

THIRD_PARTY_TESTS = '''
import pytest
from kerna.state import Page, backend_class, connect
from kerna.testing import StateBackendSuite


class TestMemory(StateBackendSuite):
    @pytest.fixture
    async def backend(self):
        b = await connect("memory://")
        yield b
        await b.aclose()


class Unordered(backend_class("memory://")):
    """Returns each page backwards: not a conforming backend."""

    async def range(self, prefix, **kwargs):
        page = await super().range(prefix, **kwargs)
        return Page(tuple(reversed(page.kvs)), page.revision, page.more)


class TestUnordered(StateBackendSuite):
    @pytest.fixture
    async def backend(self):
        b = Unordered()
        yield b
        await b.aclose()
'''


def test_a_third_party_backend_runs_the_shipped_suite_with_one_import(tmp_path: Path) -> None:
    (tmp_path / "test_mybackend.py").write_text(THIRD_PARTY_TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = done.stdout.splitlines()
    passed = [line for line in lines if line.startswith("PASSED test_mybackend.py::TestMemory::")]
    failed = [line.split("::")[-1].split("[")[0] for line in lines if line.startswith("FAILED")]
    assert len(passed) >= 12, done.stdout + done.stderr
    assert not any("TestMemory" in line for line in lines if line.startswith("FAILED")), done.stdout
    assert "test_range_pages_in_key_order_and_respects_the_prefix" in failed, done.stdout


def test_importing_kerna_testing_needs_no_pytest_until_the_suite_is_used() -> None:
    code = (
        "import sys, kerna.testing\n"
        "assert 'pytest' not in sys.modules\n"
        "assert 'StateBackendSuite' in dir(kerna.testing)\n"
        "kerna.testing.StateBackendSuite\n"
        "assert 'pytest' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_importing_kerna_testing_needs_no_pytest_until_the_transport_suite_is_used() -> None:
    code = (
        "import sys, kerna.testing\n"
        "assert 'pytest' not in sys.modules\n"
        "assert {'TransportSuite', 'TransportFactory'} <= set(dir(kerna.testing))\n"
        "kerna.testing.TransportSuite\n"
        "assert 'pytest' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_kerna_testing_all_lists_exactly_its_public_names_sorted() -> None:
    import types

    import kerna.testing

    public = {n for n in dir(kerna.testing) if not n.startswith("_")}
    public = {n for n in public if not isinstance(getattr(kerna.testing, n), types.ModuleType)}
    assert sorted(public) == sorted(kerna.testing.__all__)
    assert list(kerna.testing.__all__) == sorted(kerna.testing.__all__)
