"""nats:// against a real nats-server: subjects per node, the sender's address, order,
the server's frame limit, bounded send queues, presence probes, a frozen server."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import nats.aio.msg
import pytest

from kerna import Agent, ConfigError, Kernel, Request, handler
from kerna.testing import (
    NatsServer,
    free_ports,
    require_server,
    running_nats,
    skip_missing_servers,
)
from kerna.transports import (
    FrameTooLarge,
    PeerUnreachable,
    SendQueueFull,
    Transport,
    TransportClosed,
    open_transport,
)
from kerna.transports._nats import (
    NatsFramesDropped,
    NatsServerUnavailable,
    NatsTransport,
    PeerNotListening,
)
from kerna.transports._nats_client import ReaderClient

from .conftest import assert_no_stray_tasks

pytestmark = pytest.mark.anyio


class Node:
    """A started transport and what its callbacks saw."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.frames: list[tuple[str, bytes]] = []
        self.lost: list[tuple[str, BaseException | None]] = []
        self._changed = asyncio.Event()

    def on_frame(self, peer: str, frame: bytes) -> None:
        self.frames.append((peer, frame))
        self._changed.set()

    def on_peer_lost(self, peer: str, error: BaseException | None) -> None:
        self.lost.append((peer, error))
        self._changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    @property
    def address(self) -> str:
        return self.transport.address


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
async def nodes(nats_server: NatsServer) -> AsyncIterator[Callable[..., object]]:
    """Starts nodes on the session's server; closes them all after the test.

    A first send waits for a presence probe's answer: within 5 s here, the bound of
    this file's other waits, not the transport's 2 s default (a loaded machine has
    starved one past that); the tests of the probe's own timing pass theirs."""
    started: list[Node] = []

    async def make(server: NatsServer = nats_server, **options: object) -> Node:
        options.setdefault("probe_timeout", 5.0)
        transport = NatsTransport(f"{server.url}/{unique('n')}", **options)  # type: ignore[arg-type]
        node = Node(transport)
        await transport.start(node.on_frame, node.on_peer_lost)
        started.append(node)
        return node

    yield make
    for node in started:
        async with asyncio.timeout(10):
            await node.transport.aclose()


async def test_frames_arrive_in_order_carrying_the_senders_address(nodes: Callable) -> None:
    a, b = await nodes(), await nodes()
    for i in range(200):
        await a.transport.send(b.address, f"frame {i}".encode())
    await b.until(lambda: len(b.frames) == 200)
    assert b.frames == [(a.address, f"frame {i}".encode()) for i in range(200)]
    # The address is what the receiver sends back to.
    peer, _ = b.frames[0]
    await b.transport.send(peer, b"reply")
    await a.until(lambda: a.frames == [(b.address, b"reply")])
    assert not a.lost
    assert not b.lost


async def test_the_address_names_the_server_and_node_and_hides_credentials(
    nats_server: NatsServer,
) -> None:
    t = NatsTransport(f"nats://someone:secret@127.0.0.1:{nats_server.port}/node-x")
    assert t.address == f"nats://127.0.0.1:{nats_server.port}/node-x"
    assert t.subject == "kerna.node.node-x"
    named = NatsTransport(nats_server.url, name="node-y", subject_prefix="app.one")
    assert named.address.endswith("/node-y")
    assert named.subject == "app.one.node.node-y"
    assert NatsTransport(nats_server.url).address != NatsTransport(nats_server.url).address


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("nats://", {}, "nats://host:port"),
        ("nats://h:99999/x", {}, "bad port"),
        ("nats://h:4222/a.b", {}, "node name 'a.b'"),
        ("nats://h:4222/a?x=1", {}, "as arguments"),
        ("nats://h:4222/a", {"name": "b"}, "name='b'"),
        ("nats://h:4222/a", {"ping_interval": 0}, "ping_interval"),
        ("nats://h:4222/a", {"max_outstanding_pings": 0}, "max_outstanding_pings"),
        ("nats://h:4222/a", {"subject_prefix": "a..b"}, "subject_prefix"),
        ("nats://h:4222/a", {"tls": "yes"}, "SSLContext"),
    ],
)
def test_a_bad_url_or_option_is_a_config_error_naming_it(
    url: str, options: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        NatsTransport(url, **options)  # type: ignore[arg-type]


def test_nats_is_found_by_scheme_through_its_entry_point() -> None:
    transport = open_transport("nats://127.0.0.1:4222/node-z", ping_interval=1.5)
    assert isinstance(transport, NatsTransport)


async def test_the_frame_limit_is_the_servers_max_payload_less_the_header(
    nodes: Callable, nats_server: NatsServer
) -> None:
    a, b = await nodes(), await nodes()
    limit = a.transport.max_frame_size
    assert nats_server.max_payload - 200 < limit < nats_server.max_payload
    with pytest.raises(FrameTooLarge, match=f"{limit + 1} bytes"):
        await a.transport.send(b.address, bytes(limit + 1))
    big = secrets.token_bytes(limit)  # exactly the limit: the server takes it
    await a.transport.send(b.address, big)
    await b.until(lambda: len(b.frames) == 1, timeout=10)
    assert b.frames[0][1] == big
    assert not a.lost


async def test_a_smaller_configured_limit_is_kept_and_enforced_on_receipt(
    nodes: Callable,
) -> None:
    a, b = await nodes(), await nodes(max_frame_size=100)
    assert b.transport.max_frame_size == 100
    await a.transport.send(b.address, bytes(101))  # a's limit is the server's
    await a.transport.send(b.address, b"fits")
    await b.until(lambda: len(b.frames) == 1)
    assert b.frames == [(a.address, b"fits")]
    assert [(p, type(e)) for p, e in b.lost] == [(a.address, FrameTooLarge)]


async def test_a_full_send_queue_fails_without_wait_and_waits_with_it(nodes: Callable) -> None:
    a, b = await nodes(send_queue=4), await nodes()
    # send() does not yield here: what it hands to nats-py in this loop pass counts
    # against the queue until the next pass, as queued frames do.
    for i in range(4):
        await a.transport.send(b.address, b"%d" % i)
    with pytest.raises(SendQueueFull, match="full"):
        await a.transport.send(b.address, b"dropped", wait=False)
    async with asyncio.timeout(5):
        await a.transport.send(b.address, b"4")  # waits for room
    await b.until(lambda: len(b.frames) == 5)
    assert [f for _, f in b.frames] == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_first_send_to_a_node_nobody_listens_on_is_unreachable(
    nodes: Callable,
) -> None:
    a = await nodes()
    ghost = f"{a.address.rsplit('/', 1)[0]}/{unique('ghost')}"
    with pytest.raises(PeerNotListening, match=a.transport.server + ": no responders"):
        await a.transport.send(ghost, b"into the void")
    assert a.lost == []  # never reached, so never lost
    with pytest.raises(PeerUnreachable, match="not a nats node address"):
        await a.transport.send("tcp://127.0.0.1:1/x", b"x")


async def test_a_peer_gone_without_a_goodbye_is_found_by_the_next_probe(
    nodes: Callable, nats_server: NatsServer
) -> None:
    # A node that vanishes without closing (a crash): a bare client answering the
    # presence probes on a node subject, then unsubscribing without a goodbye.
    a = await nodes(ping_interval=0.1)
    name = unique("crashing")
    raw = await nats.connect(nats_server.url)
    try:

        async def answer(msg: nats.aio.msg.Msg) -> None:
            if msg.reply:
                await raw.publish(msg.reply, b"")

        sub = await raw.subscribe(f"kerna.node.{name}", cb=answer)
        await raw.flush()
        peer = f"{nats_server.url}/{name}"
        await a.transport.send(peer, b"hello")  # probed: it answers
        await sub.unsubscribe()
        await raw.flush()
        # Presence is re-checked once ping_interval has passed since the last check:
        # keep sending (paced) until a notices.
        async with asyncio.timeout(5):
            while not a.lost:
                await a.transport.send(peer, b"anyone?")
                await asyncio.sleep(0.05)
    finally:
        await raw.close()
    ((lost, error),) = a.lost
    assert lost == peer
    assert isinstance(error, PeerNotListening)
    assert "no responders" in str(error)
    with pytest.raises(PeerNotListening):  # and the next send is refused at once
        await a.transport.send(peer, b"still?")


async def test_a_node_name_in_use_is_refused(nodes: Callable, nats_server: NatsServer) -> None:
    a = await nodes()
    twin = NatsTransport(a.address)
    with pytest.raises(ConfigError, match="already listens"):
        await twin.start(lambda p, f: None, lambda p, e: None)
    await twin.aclose()


async def test_an_unreachable_server_fails_start_naming_it() -> None:
    (port,) = free_ports(1)
    t = NatsTransport(f"nats://127.0.0.1:{port}/x", connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(NatsServerUnavailable, match=f"127.0.0.1:{port}"):
        await t.start(lambda p, f: None, lambda p, e: None)
    assert time.monotonic() - started < 3
    await t.aclose()


async def test_a_frozen_server_is_noticed_within_the_ping_bound_and_traffic_resumes(
    fresh_nats_server: NatsServer, nodes: Callable
) -> None:
    server = fresh_nats_server
    options = {"server": server, "ping_interval": 0.25, "max_outstanding_pings": 1}
    a, b = await nodes(**options), await nodes(**options)
    await a.transport.send(b.address, b"before")
    await b.until(lambda: len(b.frames) == 1)
    server.pause()
    try:
        frozen = time.monotonic()
        # nats-py's default ping_interval (120 s) would not notice for minutes.
        await a.until(lambda: bool(a.lost), timeout=5)
        noticed = time.monotonic() - frozen
    finally:
        server.resume()
    ((peer, error),) = a.lost
    assert peer == b.address
    assert isinstance(error, NatsServerUnavailable)
    assert str(server.port) in str(error)
    assert noticed < 0.25 * (1 + 2) + 1.5  # ping_interval * (pings + 2), with room
    # nats-py reconnects by itself; frames flow again (a probe first: the peer is unknown).
    async with asyncio.timeout(10):
        while len(b.frames) < 2:
            try:
                await a.transport.send(b.address, b"after")
                await b.until(lambda: len(b.frames) >= 2, timeout=0.5)
            except (TimeoutError, NatsServerUnavailable):
                await asyncio.sleep(0.05)  # a or b still reconnecting: send again
    assert b.frames[1] == (a.address, b"after")


async def test_user_password_and_token_pass_through_and_a_wrong_one_is_refused() -> None:
    with (
        skip_missing_servers(),
        running_nats(extra_config='authorization { user: "kerna", password: "s3cret" }') as server,
    ):
        good = NatsTransport(f"{server.url}/a", user="kerna", password="s3cret")
        in_url = NatsTransport(f"nats://kerna:s3cret@127.0.0.1:{server.port}/b")
        wrong = NatsTransport(f"{server.url}/c", user="kerna", password="nope")
        a, b = Node(good), Node(in_url)
        try:
            await good.start(a.on_frame, a.on_peer_lost)
            await in_url.start(b.on_frame, b.on_peer_lost)
            assert "s3cret" not in in_url.address
            await good.send(in_url.address, b"authenticated")
            await b.until(lambda: b.frames == [(good.address, b"authenticated")])
            with pytest.raises(NatsServerUnavailable, match=f"{server.port}.*[Aa]uthoriz"):
                await wrong.start(lambda p, f: None, lambda p, e: None)
        finally:
            for t in (good, in_url, wrong):
                await t.aclose()
    with (
        skip_missing_servers(),
        running_nats(extra_config='authorization { token: "t0ken" }') as server,
    ):
        t = NatsTransport(f"{server.url}/a", token="t0ken")
        try:
            await t.start(lambda p, f: None, lambda p, e: None)
        finally:
            await t.aclose()


def _self_signed(root: Path) -> tuple[Path, Path]:
    cert, key = root / "server.pem", root / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls_passes_through_and_an_untrusted_server_is_refused(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        require_server("openssl is not installed: it makes the test's certificate")
    cert, key = _self_signed(tmp_path)
    tls = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}'
    with skip_missing_servers(), running_nats(extra_config=tls) as server:
        trusting = ssl.create_default_context(cafile=str(cert))
        a_t = NatsTransport(f"{server.url}/a", tls=trusting)
        b_t = NatsTransport(f"{server.url}/b", tls=trusting)
        untrusting = NatsTransport(f"{server.url}/c", tls=ssl.create_default_context())
        a, b = Node(a_t), Node(b_t)
        try:
            await a_t.start(a.on_frame, a.on_peer_lost)
            await b_t.start(b.on_frame, b.on_peer_lost)
            await a_t.send(b_t.address, b"over tls")
            await b.until(lambda: b.frames == [(a_t.address, b"over tls")])
            with pytest.raises(NatsServerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.start(lambda p, f: None, lambda p, e: None)
        finally:
            for t in (a_t, b_t, untrusting):
                await t.aclose()


async def test_concurrent_senders_keep_each_senders_order(nodes: Callable) -> None:
    a, b = await nodes(send_queue=8), await nodes()

    async def sender(tag: bytes) -> None:
        for i in range(100):
            await a.transport.send(b.address, tag + b"%d" % i)

    async with asyncio.timeout(10):
        await asyncio.gather(*(sender(t) for t in (b"x", b"y", b"z")))
    await b.until(lambda: len(b.frames) == 300)
    for tag in (b"x", b"y", b"z"):
        mine = [f for _, f in b.frames if f.startswith(tag)]
        assert mine == [tag + b"%d" % i for i in range(100)]


async def test_closing_leaves_no_task_of_the_transport(nats_server: NatsServer) -> None:
    before = asyncio.all_tasks()
    a, b = Node(NatsTransport(f"{nats_server.url}/{unique('a')}")), None
    await a.transport.start(a.on_frame, a.on_peer_lost)
    b = Node(NatsTransport(f"{nats_server.url}/{unique('b')}"))
    await b.transport.start(b.on_frame, b.on_peer_lost)
    await a.transport.send(b.address, b"x")
    await b.until(lambda: len(b.frames) == 1)
    async with asyncio.timeout(10):
        await a.transport.aclose()
        await b.transport.aclose()
    assert_no_stray_tasks(before)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert not leftover, leftover


class Sum(Request[int]):
    a: int
    b: int


class Adder(Agent):
    @handler
    async def add(self, msg: Sum) -> int:
        return msg.a + msg.b


async def test_two_kernels_ask_each_other_over_nats(nats_server: NatsServer) -> None:
    options = {"ping_interval": 0.5}
    async with (
        Kernel(transport=f"{nats_server.url}/{unique('ka')}", transport_options=options) as a,
        Kernel(transport=f"{nats_server.url}/{unique('kb')}", transport_options=options) as b,
    ):
        b.register(Adder)
        assert b.address is not None
        assert b.address.startswith(nats_server.url)
        results = await asyncio.gather(
            *(a.ref(Adder, "x", node=b.address).ask(Sum(a=i, b=1), timeout=5) for i in range(50))
        )
        assert results == [i + 1 for i in range(50)]


async def test_a_burst_of_data_frames_is_handed_over_from_the_reader_never_dropped(
    nodes: Callable,
) -> None:
    # A version 2 peer's data frames reach on_frame from nats-py's reader as parsed
    # (kerna.transports._nats_client), not through nats-py's subscription queue, which
    # holds 2 here: a burst that arrives in one read is all delivered, in order. On a
    # nats-py whose reader no longer calls the hook the queue drops most of it and this
    # fails.
    a, b = await nodes(), await nodes(receive_queue=2)
    await a.transport.send(b.address, b"hello")
    await b.until(lambda: len(b.frames) == 1)
    for i in range(200):
        await a.transport.send(b.address, b"%d" % i)
    await b.until(lambda: len(b.frames) == 201)
    assert [frame for _, frame in b.frames[1:]] == [b"%d" % i for i in range(200)]
    assert {peer for peer, _ in b.frames} == {a.address}
    assert b.lost == []


async def test_frames_nats_drops_for_a_slow_receiver_report_its_peers_lost(
    nodes: Callable,
) -> None:
    # Frames that name their sender in a header (protocol version 1's way) go through
    # nats-py's subscription queue, of receive_queue frames.
    a, b = await nodes(sender_header=True), await nodes(receive_queue=2)
    await a.transport.send(b.address, b"hello")
    await b.until(lambda: len(b.frames) == 1)
    # One burst, published without yielding, arrives in one read: nats-py queues two
    # for on_frame and drops the rest.
    for i in range(200):
        await a.transport.send(b.address, b"%d" % i)
    await b.until(lambda: bool(b.lost))
    ((peer, error),) = b.lost
    assert peer == a.address
    assert isinstance(error, NatsFramesDropped)
    assert "more than 2 waited for on_frame" in str(error)
    assert len(b.frames) < 201


async def test_closing_while_a_first_send_waits_for_its_probe_fails_it_as_closed(
    nodes: Callable, nats_server: NatsServer
) -> None:
    a = await nodes(probe_timeout=20)
    name = unique("mute")
    raw = await nats.connect(nats_server.url)  # subscribed, never answers the probe
    try:
        probed = asyncio.Event()

        async def mute(msg: nats.aio.msg.Msg) -> None:
            probed.set()

        await raw.subscribe(f"kerna.node.{name}", cb=mute)
        await raw.flush()
        sending = asyncio.ensure_future(a.transport.send(f"{nats_server.url}/{name}", b"x"))
        async with asyncio.timeout(5):
            await probed.wait()
            await a.transport.aclose()
            with pytest.raises(TransportClosed):
                await sending
    finally:
        await raw.close()


async def test_send_now_takes_frames_for_a_peer_found_present_and_not_before(
    nodes: Callable,
) -> None:
    a, b = await nodes(), await nodes()
    assert not a.transport.send_now(b.address, b"too early")  # no probe answered yet
    await a.transport.send(b.address, b"first")  # the first contact probes b
    assert all(a.transport.send_now(b.address, b"now-%d" % i) for i in range(5))
    await b.until(lambda: len(b.frames) == 6)
    assert [frame for _, frame in b.frames] == [b"first"] + [b"now-%d" % i for i in range(5)]


def _client(node: Node) -> ReaderClient:
    """``node``'s nats-py client: its counters are the one view of when a frame reached
    it, and of whether the hooks into nats-py work on the installed version."""
    transport = node.transport
    assert isinstance(transport, NatsTransport)
    client = transport._nc  # noqa: SLF001 - the client's counters, see above
    assert client is not None
    return client


def _published(node: Node) -> int:
    """How many messages ``node``'s nats-py client has taken to publish."""
    count: int = _client(node).stats["out_msgs"]
    return count


async def test_a_frame_to_an_idle_present_peer_reaches_nats_py_before_send_returns(
    nodes: Callable,
) -> None:
    # A lone request or reply does not wait a loop pass for the peer's publishing task.
    # (ping_interval: b stays present, not due for a probe, on a slow machine too.)
    a, b = await nodes(ping_interval=30), await nodes()
    await a.transport.send(b.address, b"first")  # the first contact probes b
    await b.until(lambda: len(b.frames) == 1)
    before = _published(a)
    await a.transport.send(b.address, b"sent")
    assert _published(a) == before + 1
    assert a.transport.send_now(b.address, b"sent now")
    assert _published(a) == before + 2
    await b.until(lambda: len(b.frames) == 3)
    assert [f for _, f in b.frames] == [b"first", b"sent", b"sent now"]


async def test_a_lone_frame_goes_to_the_socket_at_once_the_rest_of_its_pass_together(
    nodes: Callable,
) -> None:
    # The first frame of a loop pass is written to the socket by send itself
    # (ReaderClient.publish_now), not a pass later by nats-py's flusher; the rest of
    # the pass go through nats-py's buffer, out together in one write, behind it.
    a, b = await nodes(ping_interval=30), await nodes()
    await a.transport.send(b.address, b"first")  # the first contact probes b
    await b.until(lambda: len(b.frames) == 1)
    client = _client(a)
    written = client.written_at_once
    await a.transport.send(b.address, b"lone")
    assert client.written_at_once == written + 1
    assert client.pending_data_size == 0  # nothing of it waits in nats-py
    assert all(a.transport.send_now(b.address, b"%d" % i) for i in range(20))
    assert client.written_at_once == written + 1
    assert client.pending_data_size > 0  # for nats-py's flusher
    await b.until(lambda: len(b.frames) == 22)
    assert a.transport.send_now(b.address, b"next pass")
    assert client.written_at_once == written + 2
    await b.until(lambda: len(b.frames) == 23)
    assert [f for _, f in b.frames] == [
        b"first",
        b"lone",
        *(b"%d" % i for i in range(20)),
        b"next pass",
    ]


async def test_a_socket_that_takes_no_more_is_not_written_at_once(
    fresh_nats_server: NatsServer, nodes: Callable
) -> None:
    # The server stops reading (SIGSTOP): once the socket's buffers are full, frames
    # are not written at once any more but go to nats-py's bounded buffer and then the
    # peer's queue, which fills (one frame per loop pass: each would be the pass's first).
    # Were every first frame written at once, the transport's buffer would grow
    # without bound and no send would ever find the queue full.
    options = {"server": fresh_nats_server, "ping_interval": 30}
    a = await nodes(send_queue=8, pending_size=256 * 1024, **options)
    b = await nodes(**options)
    await a.transport.send(b.address, b"first")
    await b.until(lambda: len(b.frames) == 1)
    frame = b"x" * 65536
    fresh_nats_server.pause()
    try:
        sent = 0
        with contextlib.suppress(SendQueueFull):
            while sent < 1000:  # about 200 fill the sockets and the buffers
                await a.transport.send(b.address, frame, wait=False)
                sent += 1
                await asyncio.sleep(0)  # a new loop pass
        assert sent < 1000, "1000 frames taken by a server that reads nothing"
        assert _client(a).written_at_once < sent
    finally:
        fresh_nats_server.resume()


async def _full_queue_of_four(nodes: Callable) -> tuple[Node, Node]:
    """``a`` with a send queue of 4 to ``b``, filled without yielding after a first
    frame ``b`` got: with ``pending_size=1`` every publish waits for nats-py's flusher,
    so the queue stays full until the loop runs."""
    a, b = await nodes(pending_size=1, send_queue=4), await nodes()
    await a.transport.send(b.address, b"first")
    await b.until(lambda: len(b.frames) == 1)
    for i in range(4):
        await a.transport.send(b.address, b"%d" % i, wait=False)
    return a, b


async def test_frames_sent_while_a_publish_waits_in_nats_py_queue_behind_it_in_order(
    nodes: Callable,
) -> None:
    # pending_size=1: every publish is over nats-py's buffer and waits for its flusher.
    # Without yielding: the first publish waits in nats-py and keeps its place in the
    # queue; three more are queued behind it; the fifth finds the queue full.
    a, b = await _full_queue_of_four(nodes)
    with pytest.raises(SendQueueFull):
        await a.transport.send(b.address, b"refused", wait=False)
    sent = [b"%d" % i for i in range(4)]
    async with asyncio.timeout(10):
        for i in range(4, 60):
            frame = b"%d" % i
            if i % 3 or not a.transport.send_now(b.address, frame):
                await a.transport.send(b.address, frame)
            sent.append(frame)
    await b.until(lambda: len(b.frames) == 1 + len(sent))
    assert [f for _, f in b.frames] == [b"first", *sent]
    assert not a.lost


async def test_a_publish_nats_py_refuses_at_once_loses_the_peer(
    nodes: Callable, nats_server: NatsServer
) -> None:
    # nats-py raises from publish before it waits (here: a message over the server's
    # max_payload, let past by a limit raised after start): the peer is reported lost
    # with the cause, the frame dropped, and the next send probes it again.
    a, b = await nodes(), await nodes()
    await a.transport.send(b.address, b"first")
    await b.until(lambda: len(b.frames) == 1)
    a.transport.max_frame_size = nats_server.max_payload * 2
    await a.transport.send(b.address, b"x" * (nats_server.max_payload + 1))
    await a.until(lambda: bool(a.lost))
    ((peer, error),) = a.lost
    assert peer == b.address
    assert isinstance(error, NatsServerUnavailable)
    assert "MaxPayloadError" in str(error)
    await a.transport.send(b.address, b"after")  # probed again, then sent
    await b.until(lambda: len(b.frames) == 2)
    assert b.frames[1] == (a.address, b"after")


async def test_a_goodbye_while_a_publish_waits_leaves_the_peer_sendable_once_back(
    nats_server: NatsServer, nodes: Callable
) -> None:
    # b leaves while a's task is publishing a long queue to it (pending_size=1: each
    # publish waits for nats-py's flusher): a drops the rest and reports b lost, and
    # once b is back on its address a's frames reach it again.
    a = await nodes(pending_size=1)
    b = Node(NatsTransport(f"{nats_server.url}/{unique('b')}"))
    await b.transport.start(b.on_frame, b.on_peer_lost)
    await a.transport.send(b.address, b"first")
    await b.until(lambda: len(b.frames) == 1)
    for i in range(500):
        await a.transport.send(b.address, b"%d" % i, wait=False)
    async with asyncio.timeout(10):
        await b.transport.aclose()
    await a.until(lambda: bool(a.lost))
    assert [(p, type(e)) for p, e in a.lost] == [(b.address, PeerNotListening)]
    back = Node(NatsTransport(b.address))
    await back.transport.start(back.on_frame, back.on_peer_lost)
    try:
        await a.transport.send(b.address, b"again")
        await back.until(lambda: (a.address, b"again") in back.frames)
    finally:
        async with asyncio.timeout(10):
            await back.transport.aclose()


@contextlib.asynccontextmanager
async def _a_sender_waiting_on_a_drained_queue(nodes: Callable) -> AsyncIterator[tuple[Node, Node]]:
    """``a`` and ``b`` of ``_full_queue_of_four``, with a sender to ``b`` waiting for room
    and the queue since drained: the sender is stepped by hand up to its wait, so (not
    being a task) it still waits when the room comes. Its wait is given up on exit."""
    a, b = await _full_queue_of_four(nodes)
    waiter = a.transport.send(b.address, b"waiter")
    waiter.send(None)  # it found the queue full: it waits for room
    try:
        await b.until(lambda: len(b.frames) == 5)  # the queue drained: room now
        yield a, b
    finally:
        waiter.close()  # its wait given up: no sender waits any more


async def test_send_now_does_not_overtake_a_sender_waiting_for_room(nodes: Callable) -> None:
    async with _a_sender_waiting_on_a_drained_queue(nodes) as (a, b):
        assert not a.transport.send_now(b.address, b"overtaker")
    assert a.transport.send_now(b.address, b"later")
    await b.until(lambda: len(b.frames) == 6)
    assert [f for _, f in b.frames] == [b"first", b"0", b"1", b"2", b"3", b"later"]


def _subject(address: str) -> str:
    return f"kerna.node.{address.rsplit('/', 1)[1]}"


async def _as_a_second_subscriber_sees_it(
    nats_server: NatsServer, a: Node, b: Node, data: bytes
) -> nats.aio.msg.Msg:
    """The NATS message of ``data`` sent from ``a`` to ``b``, as a second subscriber on
    ``b``'s subject sees it (``b`` gets it too)."""
    seen: list[nats.aio.msg.Msg] = []
    got = asyncio.Event()
    raw = await nats.connect(nats_server.url)
    try:

        async def record(msg: nats.aio.msg.Msg) -> None:
            if msg.data == data:  # (the probe comes this way too)
                seen.append(msg)
                got.set()

        await raw.subscribe(_subject(b.address), cb=record)
        await raw.flush()
        await a.transport.send(b.address, data)
        await b.until(lambda: len(b.frames) == 1)
        async with asyncio.timeout(5):
            await got.wait()
    finally:
        await raw.close()
    (message,) = seen
    return message


async def test_version_2_peers_name_the_sender_in_the_reply_subject_not_a_header(
    nodes: Callable, nats_server: NatsServer
) -> None:
    a, b = await nodes(), await nodes()
    frame = await _as_a_second_subscriber_sees_it(nats_server, a, b, b"hello")
    assert b.frames == [(a.address, b"hello")]
    assert frame.headers is None  # no header to build or parse
    assert frame.reply == a.address
    info = a.transport.peer_info(b.address)
    assert info is not None
    assert info.version == 2


async def test_a_version_1_peer_gets_the_from_header_and_its_header_frames_are_read(
    nodes: Callable, nats_server: NatsServer
) -> None:
    # An older kerna node, played by a bare client: it answers probes without saying a
    # version, reads the sender from the Kerna-From header and sends with it.
    a = await nodes()
    old = f"{nats_server.url}/{unique('old')}"
    seen: list[nats.aio.msg.Msg] = []
    got = asyncio.Event()
    raw = await nats.connect(nats_server.url)
    try:

        async def older_node(msg: nats.aio.msg.Msg) -> None:
            if msg.headers and "Kerna-Probe" in msg.headers:
                await raw.publish(msg.reply, b"")  # no version: 1
            else:
                seen.append(msg)
                got.set()

        await raw.subscribe(_subject(old), cb=older_node)
        await raw.flush()
        await a.transport.send(old, b"to the old one")
        await raw.publish(_subject(a.address), b"from the old one", headers={"Kerna-From": old})
        await a.until(lambda: bool(a.frames))
        async with asyncio.timeout(5):
            await got.wait()
    finally:
        await raw.close()
    assert a.frames == [(old, b"from the old one")]
    (frame,) = seen
    assert frame.data == b"to the old one"
    assert frame.headers == {"Kerna-From": a.address}
    assert not frame.reply
    info = a.transport.peer_info(old)
    assert info is not None
    assert info.version == 1


class _CountingNode(Node):
    """A node that also notes how many frames it had when each peer was lost."""

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport)
        self.frames_when_lost: list[int] = []

    def on_peer_lost(self, peer: str, error: BaseException | None) -> None:
        self.frames_when_lost.append(len(self.frames))
        super().on_peer_lost(peer, error)


async def test_closing_publishes_the_frames_still_queued_before_the_goodbye(
    nats_server: NatsServer, nodes: Callable
) -> None:
    # pending_size=1: a's first publish waits in nats-py, the frames sent after it wait
    # in a's queue for its publishing task; a closes at once (a stopping kernel's last
    # error replies, say): b gets them all, and only then hears that a left.
    a = await nodes(pending_size=1)
    b = _CountingNode(NatsTransport(f"{nats_server.url}/{unique('b')}"))
    await b.transport.start(b.on_frame, b.on_peer_lost)
    try:
        await a.transport.send(b.address, b"first")
        await b.until(lambda: len(b.frames) == 1)
        for i in range(5):
            await a.transport.send(b.address, b"%d" % i, wait=False)
        async with asyncio.timeout(10):
            await a.transport.aclose()
        await b.until(lambda: bool(b.lost))
        assert [(p, type(e)) for p, e in b.lost] == [(a.address, PeerNotListening)]
        assert [f for _, f in b.frames] == [b"first", b"0", b"1", b"2", b"3", b"4"]
        assert b.frames_when_lost == [6]
    finally:
        async with asyncio.timeout(10):
            await b.transport.aclose()


async def test_a_send_that_will_not_wait_does_not_overtake_a_sender_waiting_for_room(
    nodes: Callable,
) -> None:
    # As send_now (and tcp): while a sender waits for room, a send with wait=False
    # finds the queue full even once it has drained, rather than go ahead of it.
    async with _a_sender_waiting_on_a_drained_queue(nodes) as (a, b):
        with pytest.raises(SendQueueFull):
            await a.transport.send(b.address, b"overtaker", wait=False)
    await a.transport.send(b.address, b"later", wait=False)
    await b.until(lambda: len(b.frames) == 6)
    assert [f for _, f in b.frames] == [b"first", b"0", b"1", b"2", b"3", b"later"]


async def test_sender_header_names_the_sender_in_a_header_for_rewritten_reply_subjects(
    nodes: Callable, nats_server: NatsServer
) -> None:
    a, b = await nodes(sender_header=True), await nodes()
    frame = await _as_a_second_subscriber_sees_it(nats_server, a, b, b"hello")
    assert b.frames == [(a.address, b"hello")]
    assert frame.headers == {"Kerna-From": a.address}


async def test_a_frame_whose_reply_subject_is_no_node_address_is_dropped_and_logged(
    nodes: Callable, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # What a server that rewrites reply subjects (a cross-account import) delivers.
    a, b = await nodes(), await nodes()
    raw = await nats.connect(nats_server.url)
    try:
        await raw.publish(_subject(b.address), b"whose?", reply="elsewhere.inbox.1")
        await raw.flush()
        await a.transport.send(b.address, b"good")  # after it, on b's one subscription
        await b.until(lambda: len(b.frames) == 1)
    finally:
        await raw.close()
    assert b.frames == [(a.address, b"good")]
    assert "reply subject 'elsewhere.inbox.1' is not a kerna node's address" in caplog.text
    assert "sender_header=True" in caplog.text


async def _written_raw(server: NatsServer, protocol: bytes) -> None:
    """Write ``protocol`` (PUB/HPUB lines, what nats-py would not send) to ``server``
    over a raw connection, in one write, and wait until the server has taken it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"headers":true}\r\n' + protocol + b"PING\r\n")
        async with asyncio.timeout(5):
            assert await reader.readline() == b"PONG\r\n"  # the server took it all
    finally:
        writer.close()


async def test_a_reply_subject_that_is_not_utf8_is_dropped_and_the_node_reads_on(
    nodes: Callable, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Anyone who may publish to a node's subject can send one (nats-py cannot: it
    # takes str), here over a raw protocol connection. nats-py's reader would fail to
    # decode it and end its read loop: the node would hear nothing more.
    a, b = await nodes(), await nodes()
    subject = _subject(b.address).encode()
    await _written_raw(
        nats_server,
        b"".join(
            b"PUB %s %s 5\r\nwhose\r\n" % (subject, r)
            for r in (b"nats://\xff\xfe", b"\xff\xfe.inbox")
        ),
    )
    await a.transport.send(b.address, b"good")  # after them, on b's one subscription
    await b.until(lambda: len(b.frames) == 1)
    assert b.frames == [(a.address, b"good")]
    assert b.lost == []
    assert caplog.text.count("is not UTF-8") == 2


async def test_a_header_block_nats_py_cannot_parse_is_dropped_and_the_node_reads_on(
    nodes: Callable, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # nats-server passes on any header block; nats-py's _process_headers indexes past
    # the "NATS/1.0" it expects and raises IndexError for one shorter than that, which
    # would end its read loop: the node would hear nothing more. (b's pings 30 s apart:
    # a stale-connection reconnect would otherwise revive its reader within the wait.)
    a, b = await nodes(), await nodes(ping_interval=30)
    subject = _subject(b.address).encode()
    await _written_raw(nats_server, b"HPUB %s nats://x/y 4 9\r\nabcdwhose\r\n" % subject)
    await a.transport.send(b.address, b"good")  # after it, on b's one subscription
    await b.until(lambda: len(b.frames) == 1)
    assert b.frames == [(a.address, b"good")]
    assert b.lost == []
    assert "nats-py could not process" in caplog.text


async def test_a_senders_header_named_frame_is_not_overtaken_by_its_next_reply_named_one(
    nodes: Callable, nats_server: NatsServer
) -> None:
    # Both forms are read, and one sender may use both in a row: a sender's frames take
    # the header form to a peer it has heard from but not yet probed (its first probe
    # still out) and the reply-subject form once the probe's answer says version 2.
    # The header-named frame waits in nats-py's subscription queue for its task; the
    # next one, read in the same chunk, must not reach on_frame ahead of it from the
    # reader. Written here in one write over a raw protocol connection.
    b = await nodes()
    sender = f"{nats_server.url}/{unique('sender')}"
    subject = _subject(b.address).encode()
    header = b"NATS/1.0\r\nKerna-From: %s\r\n\r\n" % sender.encode()
    await _written_raw(
        nats_server,
        b"HPUB %s %d %d\r\n%sfirst\r\n" % (subject, len(header), len(header) + 5, header)
        + b"PUB %s %s 6\r\nsecond\r\n" % (subject, sender.encode()),
    )
    await b.until(lambda: len(b.frames) == 2)
    assert b.frames == [(sender, b"first"), (sender, b"second")]


def test_sender_header_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="sender_header must be True or False, got 'yes'"):
        NatsTransport("nats://127.0.0.1:4222/n", sender_header="yes")  # type: ignore[arg-type]
