"""``kerna node`` in processes of their own: one (``NodeProcess``) or a cluster of N from
one config (``NodeCluster``, the ``node_cluster`` fixture of the pytest plugin).

``NodeProcess`` writes a config, starts ``python -m kerna node --config ...`` and reads
its JSON log lines from stderr: ``start`` waits (bounded) for the ``"event": "ready"``
line, not for a sleep; ``stop`` signals it and waits (bounded) for its exit code. Only
the standard library and asyncio are used (the HTTP probes are raw HTTP/1.0 requests),
so a benchmark or a script may use these without pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._process import free_ports, kill_process, pause_process, resume_process, wait_for_exit

__all__ = ["NodeCluster", "NodeProcess", "http_json"]

log = logging.getLogger("kerna.testing.node")


class NodeProcess:
    """One ``kerna node`` process.

    Args:
        root: a folder for its config (``node.toml``) and whatever the config names.
        config: the TOML text; ``{port}`` is replaced by a free HTTP port.
        env: variables added to this process's environment for the node.
        cwd: the node's working directory (where its ``[node] agents`` modules import
            from); this process's working directory when None.
    """

    def __init__(
        self,
        root: Path,
        config: str,
        env: dict[str, str] | None = None,
        *,
        cwd: Path | None = None,
    ) -> None:
        self.port = free_ports(1)[0]
        self.path = root / "node.toml"
        self.path.write_text(config.replace("{port}", str(self.port)))
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd if cwd is not None else Path.cwd()
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.events: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._more = asyncio.Condition()  # notified on every log line read

    @property
    def pid(self) -> int:
        """The PID of the running (or last) process.

        Raises:
            RuntimeError: it was never started.
        """
        if self.proc is None:
            raise RuntimeError(f"node {self.path} was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.proc is not None and self.proc.returncode is None

    def event(self, name: str) -> asyncio.Event:
        """Set when a log line with ``"event": name`` is read."""
        return self.events.setdefault(name, asyncio.Event())

    async def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait for its ``ready`` log line.

        Raises:
            AssertionError: not ready within ``timeout`` or exited first (the message
                holds its last log lines); the process is killed.
        """
        self.events.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kerna",
            "node",
            "--config",
            str(self.path),
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        ready = asyncio.create_task(self.event("ready").wait())
        exited = asyncio.create_task(self.proc.wait())
        done, _ = await asyncio.wait(
            {ready, exited}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        ready.cancel()
        exited.cancel()
        if ready not in done:
            await self.kill()
            raise AssertionError(f"node not ready in {timeout}s:\n" + "\n".join(self.raw[-30:]))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            text = raw.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            try:
                entry = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                self.lines.append(entry)
                if isinstance(entry.get("event"), str):
                    self.event(entry["event"]).set()
                async with self._more:
                    self._more.notify_all()

    async def line(
        self, message: str, timeout: float = 10.0, *, prefix: bool = False
    ) -> dict[str, Any]:
        """The first JSON log line whose ``message`` is ``message`` (or, with
        ``prefix``, starts with it); waits for it.

        Raises:
            TimeoutError: no such line within ``timeout``.
        """

        def matches(entry: dict[str, Any]) -> bool:
            text = entry.get("message")
            if not isinstance(text, str):
                return False
            return text.startswith(message) if prefix else text == message

        def found() -> dict[str, Any] | None:
            return next((e for e in self.lines if matches(e)), None)

        async with asyncio.timeout(timeout), self._more:
            await self._more.wait_for(lambda: found() is not None)
        entry = found()
        assert entry is not None
        return entry

    def send(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the process.

        Raises:
            RuntimeError: it was never started.
        """
        if self.proc is None:
            raise RuntimeError(f"node {self.path} was never started")
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        """The exit code, once the process has exited (and its stderr is read).

        Raises:
            RuntimeError: it was never started.
            TimeoutError: still running after ``timeout``.
        """
        if self.proc is None or self._reader is None:
            raise RuntimeError(f"node {self.path} was never started")
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the process (SIGTERM: it drains) and wait for its exit code.

        Raises:
            RuntimeError: it was never started.
            TimeoutError: no exit within ``timeout`` (it is killed then).
        """
        if self.proc is None:
            raise RuntimeError(f"node {self.path} was never started")
        if self.proc.returncode is None:
            self.send(sig)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            await self.kill()
            raise

    async def kill(self) -> None:
        """``kill -9`` and wait (bounded) for the exit; a node already gone is no error."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()

    def pause(self) -> None:
        """SIGSTOP: the node keeps its sockets and answers nothing (its lease runs out)."""
        pause_process(self.pid)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        resume_process(self.pid)

    async def restart(self, timeout: float = 20.0) -> None:
        """``stop`` (when running), then ``start`` again on the same config and ports."""
        if self.running:
            await self.stop()
        await self.start(timeout)

    def reap(self, timeout: float = 15.0) -> None:
        """Synchronously: SIGTERM by PID, wait for the exit, SIGKILL when it does not come
        (a fixture's teardown, outside the event loop)."""
        if not self.running:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)  # a paused node cannot drain
            os.kill(self.pid, signal.SIGTERM)
        try:
            wait_for_exit(self.pid, timeout, reap=False)  # asyncio's watcher reaps it
        except TimeoutError:
            log.warning("node %s ignored SIGTERM for %s s: killed", self.pid, timeout)
            kill_process(self.pid, reap=False)


async def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``url`` (``http://host:port/path``): its status and JSON body (the text when
    the body is not JSON).

    Raises:
        OSError: no connection.
        TimeoutError: no answer within ``timeout``.
    """
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET /{path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1])
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body


class ClusterNode(NodeProcess):
    """A node of a ``NodeCluster``: a ``NodeProcess`` with its ``id`` and ``address``
    (its transport URL, the one its peers dial)."""

    def __init__(self, root: Path, config: str, node_id: str, address: str, cwd: Path) -> None:
        super().__init__(root, config, cwd=cwd)
        self.id = node_id
        self.address = address


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    raise ValueError(f"node config: {where} = {value!r}: not a string, number, bool or list")


def _toml(config: Mapping[str, Mapping[str, Any]]) -> str:
    out = []
    for section, table in config.items():
        if not isinstance(table, Mapping):
            raise ValueError(f"node config: [{section}] is not a table: {table!r}")
        out.append(f"[{section}]")
        out += [f"{k} = {_toml_value(v, f'{section}.{k}')}" for k, v in table.items()]
    return "\n".join(out) + "\n"


class NodeCluster:
    """A cluster of ``kerna node`` processes from one config, on one etcd.

    ``start(config, count)`` gives each node a distinct id (``n1``, ``n2``, ...), a free
    transport port and HTTP port, the same cluster name (a new one per cluster, so
    clusters on a shared etcd never meet) and the same secret file, and ``[state] url``
    the etcd; the rest of the config (``[node] agents``, ``lease_ttl``, ...) is yours.
    It returns when every node logged ``ready``, answers ``/readyz`` and lists all the
    others in ``/admin/status``.

    Args:
        root: a folder for the nodes' configs and the secret.
        etcd_url: the cluster's store (``etcd://...``).
        cwd: where the nodes' agent modules import from (this process's working
            directory when None).
    """

    def __init__(self, root: Path, etcd_url: str, *, cwd: Path | None = None) -> None:
        self.root = root
        self.etcd_url = etcd_url
        self.cwd = cwd if cwd is not None else Path.cwd()
        self.name = f"c{uuid.uuid4().hex[:10]}"
        self.nodes: list[ClusterNode] = []

    async def start(
        self, config: str | Mapping[str, Mapping[str, Any]], count: int = 3, timeout: float = 30.0
    ) -> list[ClusterNode]:
        """Start ``count`` nodes from ``config`` (TOML text or a dict of tables) and wait
        until all are ready and members of each other's view.

        Raises:
            ValueError: ``config`` is not valid TOML, or ``count`` is not positive.
            AssertionError: a node did not become ready (its last log lines).
            TimeoutError: the nodes did not all see each other within ``timeout``.
        """
        if count < 1:
            raise ValueError(f"a node cluster needs at least one node, not {count}")
        if isinstance(config, str):
            try:
                tables: dict[str, Any] = tomllib.loads(config)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"node config is not valid TOML: {exc}") from None
        else:
            tables = {k: dict(v) for k, v in config.items()}
        self.root.mkdir(parents=True, exist_ok=True)
        secret = self.root / "secret"
        if not secret.exists():
            secret.write_text(uuid.uuid4().hex + "\n")
        new = []
        first = len(self.nodes) + 1
        for number in range(first, first + count):
            node_id = f"n{number}"
            folder = self.root / node_id
            folder.mkdir(parents=True)
            address = f"tcp://127.0.0.1:{free_ports(1)[0]}"
            mine = {k: dict(v) for k, v in tables.items()}
            mine.setdefault("node", {}).update(cluster=self.name, id=node_id)
            mine.setdefault("state", {})["url"] = self.etcd_url
            mine.setdefault("transport", {}).update(url=address, secret_file=str(secret))
            mine.setdefault("http", {})["listen"] = "127.0.0.1:{port}"
            node = ClusterNode(folder, _toml(mine), node_id, address, self.cwd)
            self.nodes.append(node)
            new.append(node)
        await asyncio.gather(*(node.start() for node in new))
        await self.wait_members({n.id for n in self.nodes if n.running}, timeout)
        return new

    async def members(self, node: NodeProcess) -> set[str]:
        """The ids in ``node``'s ``/admin/status`` members (an empty set when it does not
        answer)."""
        try:
            status, body = await http_json(node.url + "/admin/status")
        except (OSError, TimeoutError):
            return set()
        if status != 200 or not isinstance(body, dict):
            return set()
        return {m["id"] for m in body.get("members", [])}

    async def wait_members(self, ids: set[str], timeout: float = 30.0) -> None:
        """Wait until every running node answers ``/readyz`` and lists exactly ``ids``.

        Raises:
            TimeoutError: not within ``timeout`` (the message has each node's view).
        """

        async def agreed() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                try:
                    ready, _ = await http_json(node.url + "/readyz")
                except (OSError, TimeoutError):
                    return False
                if ready != 200 or await self.members(node) != ids:
                    return False
            return True

        try:
            async with asyncio.timeout(timeout):
                while not await agreed():  # noqa: ASYNC110 - other processes' views
                    await asyncio.sleep(0.05)
        except TimeoutError:
            views = {n.id: await self.members(n) for n in self.nodes if n.running}
            raise TimeoutError(f"nodes do not all see {sorted(ids)}: {views}") from None

    def stop_all(self) -> None:
        """Stop every node by PID (SIGTERM, then SIGKILL when it does not exit)."""
        for node in self.nodes:
            node.reap()
