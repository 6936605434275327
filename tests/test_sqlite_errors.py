"""``sqlite://`` file errors are classified by what happened, with real files.

A read-only directory, file or file system is a ``ConfigError`` at open and a
``StoreFailed`` for a write at runtime, both naming the file and the reason (not the
transient ``Unavailable`` that SQLite's extended codes such as ``SQLITE_IOERR_LOCK``
used to become). A database file deleted or replaced while open fails every later write
with ``StoreFailed`` instead of acknowledging writes that are gone with the file.

Root ignores permission bits, so as root the tests make things read-only for real with
a read-only bind mount or the immutable flag (``chattr +i``); otherwise with chmod.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kerna import ConfigError, Kernel, RemoteError, StateError, StoreFailed, Unavailable
from kerna.state import _sqlite as sqlite_backend
from kerna.state import connect
from kerna.state._sqlite_db import _translate
from kerna.testing import require_server

from .agents import Counter, Echo, Inc, Ping, Pong

pytestmark = pytest.mark.anyio
ROOT = os.geteuid() == 0


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        require_server(f"{' '.join(command)} failed here: {result.stderr.strip()}")


@contextlib.contextmanager
def read_only_dir(directory: Path) -> Iterator[None]:
    """``directory`` read-only for this process (as root: a read-only bind mount)."""
    if not ROOT:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    _run("mount", "--bind", str(directory), str(directory))
    try:
        _run("mount", "-o", "remount,bind,ro", str(directory))
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


@contextlib.contextmanager
def read_only_files(*paths: Path) -> Iterator[None]:
    """``paths`` read-only for this process (as root: the immutable flag)."""
    if not ROOT:
        for path in paths:
            path.chmod(0o444)
        try:
            yield
        finally:
            for path in paths:
                path.chmod(0o644)
        return
    _run("chattr", "+i", *map(str, paths))
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


async def make_db(path: Path) -> None:
    async with await connect(url(path)) as backend:
        await backend.put("k", b"v")


async def test_a_database_in_a_read_only_directory_is_a_config_error_naming_it(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    existing = directory / "state.db"
    await make_db(existing)
    with read_only_dir(directory):
        for path in (existing, directory / "new.db"):
            with pytest.raises(ConfigError) as info:
                await connect(url(path))
            text = str(info.value)
            assert str(path) in text, text
            assert "read-only" in text or "not writable" in text, text
    assert not (directory / "new.db").exists()


async def test_a_read_only_database_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await make_db(path)
    with read_only_files(path), pytest.raises(ConfigError) as info:
        await connect(url(path))
    text = str(info.value)
    assert str(path) in text, text
    assert "not writable" in text, text
    async with await connect(url(path)) as backend:  # nothing was changed
        kv = await backend.get("k")
        assert kv is not None
        assert kv.value == b"v"


async def test_a_file_made_read_only_while_open_fails_writes_permanently(
    tmp_path: Path,
) -> None:
    if not ROOT:
        pytest.skip("an open file turns read-only only by the immutable flag, which needs root")
    path = tmp_path / "state.db"
    async with await connect(url(path)) as backend:
        rev = await backend.put("k", b"v")
        with read_only_files(path, Path(f"{path}-wal")):
            with pytest.raises(StoreFailed) as info:
                await backend.put("k", b"w")
            assert not isinstance(info.value, Unavailable)
            assert str(path) in str(info.value)
            assert "not writable" in str(info.value)
            kv = await backend.get("k")  # reads still work
            assert kv is not None
            assert (kv.value, kv.mod_revision) == (b"v", rev)
        # an operator fixed it: writes work again
        assert await backend.put("k", b"x") == rev + 1


async def test_writes_to_a_database_file_deleted_while_open_fail(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with await connect(url(path)) as backend:
        rev = await backend.put("k", b"v")
        for name in os.listdir(tmp_path):  # rm state.db*
            os.unlink(tmp_path / name)
        with pytest.raises(StoreFailed) as info:
            await backend.put("k", b"gone")
        assert str(path) in str(info.value)
        assert "deleted" in str(info.value)
        with pytest.raises(StoreFailed):
            await backend.lease_grant(5)
        kv = await backend.get("k")  # what it holds can still be read
        assert kv is not None
        assert (kv.value, kv.mod_revision) == (b"v", rev)


async def test_a_lease_due_on_a_deleted_database_neither_blocks_reads_nor_spins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "_EXPIRY_RETRY", 0.3)
    loop = asyncio.get_running_loop()
    path = tmp_path / "state.db"
    async with await connect(url(path)) as backend:
        assert isinstance(backend, sqlite_backend.SqliteBackend)
        # Due after the put and the unlink: 0.05 s once expired before the put on a
        # loaded machine (LeaseLost from the put).
        lease = await backend.lease_grant(0.5)
        await backend.put("held", b"x", lease=lease)
        os.unlink(path)
        runs: list[float] = []
        ran = asyncio.Event()
        on_expiry = backend._on_expiry  # noqa: SLF001 - the test drives the expiry hook directly

        def counted() -> None:
            runs.append(loop.time())
            ran.set()
            on_expiry()

        monkeypatch.setattr(backend, "_on_expiry", counted)
        async with asyncio.timeout(5):
            while len(runs) < 2:  # the expiry timer, retrying: it cannot write
                ran.clear()
                await ran.wait()
        assert runs[1] - runs[0] >= 0.25  # backs off instead of spinning
        kv = await backend.get("held")  # the due lease blocks no read
        assert kv is not None
        with pytest.raises(StoreFailed):
            await backend.lease_keepalive(lease)


async def test_writes_to_a_database_file_replaced_while_open_fail(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    other = tmp_path / "other.db"
    await make_db(other)
    async with await connect(url(path)) as backend:
        await backend.put("k", b"v")
        os.replace(other, path)  # e.g. a restore from a backup, under a running process
        with pytest.raises(StoreFailed) as info:
            await backend.put("k", b"lost")
        assert str(path) in str(info.value)
        assert "replaced" in str(info.value)


async def test_sqlite_errors_are_classified_by_their_primary_code(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await make_db(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute("INSERT INTO meta VALUES ('x', 1)")
    finally:
        conn.close()
    readonly = info.value
    assert readonly.sqlite_errorcode & 0xFF == sqlite3.SQLITE_READONLY
    error: StateError = _translate(readonly, str(path))
    assert isinstance(error, StoreFailed)
    assert not isinstance(error, Unavailable)
    assert str(path) in str(error)
    assert error.__cause__ is readonly


async def test_a_kernel_whose_database_file_is_deleted_lives_on_and_stops(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    kernel = Kernel(state=url(path))
    await kernel.start()
    kernel.register(Counter)
    kernel.register(Echo)
    ref = kernel.ref(Counter, "c")
    assert await ref.ask(Inc(), timeout=5) == 1
    for name in ("state.db", "state.db-wal"):
        if (tmp_path / name).exists():
            os.unlink(tmp_path / name)
    with pytest.raises(RemoteError) as info:
        await ref.ask(Inc(), timeout=5)  # the write fails: the file is gone
    assert info.value.type_name == "kerna.StoreFailed"
    await asyncio.wait_for(ref.deactivate(), 5)  # releasing the claim fails: logged
    assert kernel.running
    assert await kernel.ref(Echo, "e").ask(Ping(n=1), timeout=5) == Pong(n=1)
    await asyncio.wait_for(kernel.stop(), 10)  # revoking the lease fails: logged
    assert not kernel.running
