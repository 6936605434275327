"""kerna.testing's fault tools, each with an observable effect: the TCP fault proxy
(delay, reset, blackhole, drip, heal) between a client and an echo server, between
kerna's etcd backend and etcd, and between two kerna tcp transports; the process
helpers; ``ip netns`` + ``nft`` partitions (root only); the toxiproxy adapter's
selection and the toxics it asks for (no toxiproxy server runs here: a recording
stand-in answers)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kerna import Unavailable
from kerna.state import connect
from kerna.testing import (
    EtcdMember,
    FaultProxy,
    Netns,
    ToxiproxyFaults,
    fault_proxy,
    free_ports,
    kill_process,
    pause_process,
    resume_process,
    wait_for_exit,
)

from .tcp_peers import node

pytestmark = pytest.mark.anyio


class Echo:
    """A real TCP echo server; it records how each connection ended."""

    def __init__(self) -> None:
        self.endings: list[BaseException | None] = []
        self.ended = asyncio.Event()
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ending: BaseException | None = None
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError as exc:
            ending = exc
        finally:
            self.endings.append(ending)
            self.ended.set()
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    e = Echo()
    server = await asyncio.start_server(e.serve, "127.0.0.1", 0)
    e.port = server.sockets[0].getsockname()[1]
    try:
        yield e
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(f"127.0.0.1:{echo.port}") as p:
        yield p


async def _dial(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _round_trip(proxy: FaultProxy, data: bytes, timeout: float = 5.0) -> float:
    """Seconds for ``data`` to come back through the proxy on a new connection."""
    reader, writer = await _dial(proxy)
    try:
        start = time.monotonic()
        writer.write(data)
        async with asyncio.timeout(timeout):
            assert await reader.readexactly(len(data)) == data
        return time.monotonic() - start
    finally:
        writer.close()


async def test_the_proxy_forwards_both_ways_and_closes_with_its_peers(
    proxy: FaultProxy, echo: Echo
) -> None:
    assert proxy.endpoint == f"127.0.0.1:{proxy.port}"
    reader, writer = await _dial(proxy)
    payload = bytes(range(256)) * 1000
    writer.write(payload)
    async with asyncio.timeout(5):
        assert await reader.readexactly(len(payload)) == payload
    assert proxy.connections == 1
    writer.write_eof()  # the echo server sees the end, closes; so does the proxy
    async with asyncio.timeout(5):
        assert await reader.read() == b""
        await echo.ended.wait()
    assert echo.endings == [None]
    writer.close()


async def test_delay_holds_each_chunk_for_its_latency_each_way(proxy: FaultProxy) -> None:
    await proxy.delay(0.15)
    delayed = await _round_trip(proxy, b"ping")
    assert 0.3 <= delayed < 0.3 + 2.0, delayed  # 0.15 s each way; room for a loaded machine
    await proxy.heal()
    assert await _round_trip(proxy, b"ping") < 0.3  # undelayed: well under 2 x 0.15 s


async def test_reset_gives_both_sides_connection_reset_and_heal_accepts_again(
    proxy: FaultProxy, echo: Echo
) -> None:
    reader, writer = await _dial(proxy)
    writer.write(b"up")
    async with asyncio.timeout(5):
        assert await reader.readexactly(2) == b"up"
    await proxy.reset()
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(5):
            await reader.read(1)
    writer.close()
    async with asyncio.timeout(5):
        await echo.ended.wait()
    assert isinstance(echo.endings[0], ConnectionResetError)
    # while in reset mode, a new connection is reset too
    reader, writer = await _dial(proxy)
    writer.write(b"x")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    writer.close()
    await proxy.heal()
    await _round_trip(proxy, b"again")


async def test_a_reset_from_the_target_reaches_the_client_as_a_reset() -> None:
    async def rst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(rst, "127.0.0.1", 0)
    async with server, FaultProxy(server.sockets[0].getsockname()[:2]) as p:
        reader, writer = await _dial(p)
        writer.write(b"x")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), 5)
        writer.close()


async def test_blackhole_keeps_connections_silent_and_heal_delivers_what_was_held(
    proxy: FaultProxy,
) -> None:
    reader, writer = await _dial(proxy)
    await proxy.blackhole()
    writer.write(b"held")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.read(4)
    assert proxy.connections == 1  # not closed, only silent
    late_reader, late_writer = await _dial(proxy)  # accepted while blackholed
    late_writer.write(b"late")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await late_reader.read(4)
    await proxy.heal()
    async with asyncio.timeout(5):
        assert await reader.readexactly(4) == b"held"
        assert await late_reader.readexactly(4) == b"late"
    writer.close()
    late_writer.close()


async def test_drip_bounds_the_rate_and_heal_lifts_it(proxy: FaultProxy) -> None:
    await proxy.drip(100, 0.05)
    reader, writer = await _dial(proxy)
    payload = bytes(1000)
    start = time.monotonic()
    writer.write(payload)
    received = 0
    async with asyncio.timeout(10):
        while received < len(payload):
            received += len(await reader.read(65536))
    elapsed = time.monotonic() - start
    # 10 pieces of 100 bytes, 0.05 s apart: at least 0.45 s, i.e. <= ~2,200 B/s
    assert elapsed >= 0.45, elapsed
    writer.close()
    await proxy.heal()
    assert await _round_trip(proxy, bytes(100_000)) < 2.0


async def test_faults_reject_bad_arguments_by_name(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="delay must be >= 0"):
        await proxy.delay(-1)
    with pytest.raises(ValueError, match="drip needs nbytes >= 1"):
        await proxy.drip(0, 0.1)
    with pytest.raises(ValueError, match="must be 'host:port'"):
        FaultProxy("nowhere")


async def test_a_blackholed_etcd_is_unavailable_to_the_backend_until_healed(
    etcd_server: EtcdMember,
) -> None:
    async with FaultProxy(etcd_server.endpoint) as p:
        backend = await connect(f"etcd://{p.endpoint}", timeout=1.0)
        try:
            await backend.put("faults/etcd/k", b"1")
            await p.blackhole()
            with pytest.raises(Unavailable):
                await backend.get("faults/etcd/k")
            await p.heal()
            async with asyncio.timeout(10):
                while True:  # the client reconnects on its own schedule
                    try:
                        kv = await backend.get("faults/etcd/k")
                        break
                    except Unavailable:
                        await asyncio.sleep(0.05)
            assert kv is not None
            assert kv.value == b"1"
        finally:
            await backend.aclose()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_process_helpers_pause_resume_kill_and_wait_for_exit() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pause_process(proc.pid)
        assert _state(proc.pid) == "T"
        resume_process(proc.pid)
        assert _state(proc.pid) != "T"
        with pytest.raises(TimeoutError, match=f"process {proc.pid}"):
            wait_for_exit(proc, 0.1)
        assert kill_process(proc) == -9
        assert proc.returncode == -9
        assert kill_process(proc) == -9  # already gone: not an error
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


SESSION_WITH_A_SERVER = """
import sys, time
from pathlib import Path
from kerna.testing import ServerProcess

class Sleeper(ServerProcess):
    name = "sleeper"
    def argv(self):
        return [sys.executable, "-c", "import time; time.sleep(120)"]
    def ready(self):
        return True

server = Sleeper(Path(sys.argv[1]))
server.start()
print(server.pid, flush=True)
time.sleep(120)
"""


def test_a_terminated_session_kills_the_servers_it_started(tmp_path: Path) -> None:
    # Python runs no exit hook when SIGTERM ends it (a CI timeout): kerna.testing's
    # handler kills its servers first, then the session still ends by SIGTERM.
    session = subprocess.Popen(
        [sys.executable, "-c", SESSION_WITH_A_SERVER, str(tmp_path / "sleeper.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    server = 0
    try:
        assert session.stdout is not None
        server = int(session.stdout.readline())
        assert _state(server) not in ("", "Z")
        session.terminate()
        assert wait_for_exit(session, 10) == -15
        wait_for_exit(server, 10)  # not our child: gone, or a zombie of its new parent
    finally:
        session.kill()
        session.wait()
        if server and Path(f"/proc/{server}").exists() and _state(server) != "Z":
            kill_process(server)  # (the fix failed: leave nothing running)


ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    while data := c.recv(65536):
        c.sendall(data)
    c.close()
"""


def test_a_netns_partition_silences_traffic_until_healed(netns: Netns) -> None:
    (port,) = free_ports(1)
    server = netns.popen([sys.executable, "-c", ECHO_SERVER, str(port)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"ready\n"
        with socket.create_connection((netns.address, port), timeout=2) as s:
            s.sendall(b"one")
            assert s.recv(3) == b"one"
            netns.partition()
            s.settimeout(0.3)
            s.sendall(b"two")
            with pytest.raises(TimeoutError):
                s.recv(3)  # the packets are dropped: no reply, no reset
            with pytest.raises(TimeoutError):
                socket.create_connection((netns.address, port), timeout=0.3)
            netns.heal()
            s.settimeout(10)  # TCP retransmits what was dropped (backoff: under ~1 s)
            assert s.recv(3) == b"two"
    finally:
        kill_process(server)


async def test_toxiproxy_is_chosen_by_toxiproxy_url_and_an_absent_server_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    assert isinstance(fault_proxy("127.0.0.1:1"), FaultProxy)
    (port,) = free_ports(1)
    monkeypatch.setenv("TOXIPROXY_URL", f"http://127.0.0.1:{port}")
    chosen = fault_proxy(("127.0.0.1", 1))
    assert isinstance(chosen, ToxiproxyFaults)
    assert chosen.target == "127.0.0.1:1"
    with pytest.raises(ConnectionError, match=f"toxiproxy at http://127.0.0.1:{port}"):
        async with chosen:
            pass
    monkeypatch.setenv("TOXIPROXY_URL", "127.0.0.1:8474")
    with pytest.raises(ValueError, match="TOXIPROXY_URL must be http://host:port"):
        fault_proxy("127.0.0.1:1")


async def test_a_kerna_tcp_pair_through_the_proxy_sees_a_blackhole_as_a_lost_peer() -> None:
    async with (
        node(heartbeat=0.2, heartbeat_misses=3) as (a, a_got),
        node() as (b, b_got),
        FaultProxy(b.address.removeprefix("tcp://")) as p,
    ):
        via = f"tcp://{p.endpoint}"
        await a.send(via, b"through")
        await b_got.wait_frames(1)
        assert b_got.frames == [(a.address, b"through")]
        await p.blackhole()
        loop = asyncio.get_running_loop()
        silent = loop.time()
        error = await a_got.wait_lost(via)
        assert "sent nothing" in str(error)
        assert loop.time() - silent < 0.6 + 2.0  # the heartbeat bound, loaded machine
        await p.heal()
        await a.send(via, b"healed")  # a new connection through the healed proxy
        await b_got.wait_frames(2)
        assert b_got.frames[1] == (a.address, b"healed")


class _ToxiproxyStandIn(http.server.BaseHTTPRequestHandler):
    """Records the toxiproxy API calls it gets and answers like toxiproxy 2.x would. A
    stand-in (no toxiproxy server runs here): it checks what the adapter asks for, not
    what toxiproxy then does with the traffic."""

    calls: ClassVar[list[tuple[str, str, Any]]] = []

    def _record(self) -> Any:
        size = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(size)) if size else None
        self.calls.append((self.command, self.path, body))
        return body

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record()
        self._answer(200, {})  # /proxies: none yet

    def do_POST(self) -> None:
        body = self._record()
        if self.path == "/proxies":
            self._answer(201, {**body, "listen": "127.0.0.1:26379", "enabled": True})
        else:
            self._answer(200, body)

    def do_DELETE(self) -> None:
        self._record()
        self._answer(204, {})

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_the_toxiproxy_adapter_asks_for_the_toxic_of_each_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ToxiproxyStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    calls = _ToxiproxyStandIn.calls
    calls.clear()
    try:
        monkeypatch.setenv("TOXIPROXY_URL", f"http://127.0.0.1:{server.server_address[1]}")
        proxy = fault_proxy("127.0.0.1:6379")
        assert isinstance(proxy, ToxiproxyFaults)
        async with proxy:
            assert proxy.endpoint == "127.0.0.1:26379"
            await proxy.delay(0.1)
            await proxy.drip(10, 0.02)
            await proxy.heal()
        posted = [(path, body) for method, path, body in calls if method == "POST"]
        assert posted[0] == ("/proxies", {"upstream": "127.0.0.1:6379", "name": proxy.name,
                                          "listen": "127.0.0.1:0"})  # fmt: skip
        toxics = [(b["type"], b["stream"], b["attributes"]) for _, b in posted[1:]]
        assert toxics == [
            ("latency", "upstream", {"latency": 100}),
            ("latency", "downstream", {"latency": 100}),
            ("slicer", "upstream", {"average_size": 10, "size_variation": 0, "delay": 20000}),
            ("slicer", "downstream", {"average_size": 10, "size_variation": 0, "delay": 20000}),
        ]
        deleted = [path for method, path, _ in calls if method == "DELETE"]
        base = f"/proxies/{proxy.name}"
        assert sorted(deleted[:4]) == sorted(
            f"{base}/toxics/{kind}_{stream}"
            for kind in ("latency", "slicer")
            for stream in ("upstream", "downstream")
        )
        assert deleted[4:] == [base]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
