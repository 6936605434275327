"""Batch frames between nodes (``kerna._send_batch``, ``kerna._wire_frames`` tag 4):
the deliveries a node sends one peer in one loop pass that share their routing go out
as one frame after the first, and arrive as if each had come alone: all of them, in
order, each ask answered with its own reply and deadline; a peer that does not read
batches never gets one; a bad item is refused alone; a batch that waits for its peer
keeps its place, and one that cannot be sent fails its asks and dead-letters its tells.

The frames a node decodes are observed by wrapping its codec's ``decode`` (the one
place every received frame goes through: ``frames_decoded``)."""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, ClassVar

import msgspec
import pytest

from kerna import (
    Agent,
    AgentRef,
    DeadLetterReason,
    Kernel,
    KernelStopped,
    Message,
    RemoteError,
    Request,
    handler,
)
from kerna._envelope import ASK, EVENT, TELL
from kerna._schema_exchange import WIRE_KEY, SchemaExchange
from kerna._send_batch import MAX_ITEMS
from kerna._wire import Batch, Delivery, MessageTypes, WireCodec, WireError
from kerna._wire_frames import BatchOut, ItemOut
from kerna.transports import PeerUnreachable, open_transport

pytestmark = pytest.mark.anyio

WAIT = 10.0  # every wait is bounded by this (a loaded machine is slow)


class Numbered(Message, tag="test.batches.Numbered"):
    n: int


class Pong(Message, tag="test.batches.Pong"):
    n: int


class Ping(Request[Pong], tag="test.batches.Ping"):
    n: int


class Log(Agent):
    """Records, per agent key, what it handled in order: ("tell", n, header "h") for a
    tell, ("ask", n, the deadline it sees) for an ask."""

    seen: ClassVar[dict[str, list[tuple[str, int, Any]]]] = {}
    changed: ClassVar[asyncio.Event]

    @handler
    async def numbered(self, msg: Numbered) -> None:
        Log.seen.setdefault(self.id.key, []).append(("tell", msg.n, self.context.header("h")))
        Log.changed.set()

    @handler
    async def ping(self, msg: Ping) -> Pong:
        Log.seen.setdefault(self.id.key, []).append(("ask", msg.n, self.context.deadline))
        Log.changed.set()
        return Pong(n=msg.n)


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    Log.seen = {}
    Log.changed = asyncio.Event()


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()`` holds, re-checked whenever a Log handled."""
    async with asyncio.timeout(WAIT):
        while not condition():
            Log.changed.clear()
            await Log.changed.wait()


def count(key: str) -> int:
    return len(Log.seen.get(key, ()))


@contextmanager
def frames_decoded(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """What ``kernel`` decodes from the wire while the block runs, in order."""
    remote = kernel._runtime.remote  # noqa: SLF001 - its codec sees every frame received
    assert remote is not None
    decode = remote.codec.decode
    seen: list[Any] = []

    def recording(frame: Any, peer: str) -> Any:
        got = decode(frame, peer)
        seen.append(got)
        return got

    with monkeypatch.context() as patch:
        patch.setattr(remote.codec, "decode", recording)
        yield seen


@asynccontextmanager
async def two_nodes() -> AsyncIterator[tuple[Kernel, Kernel]]:
    """Two kernels over tcp (no heartbeat: nothing but the test's traffic)."""
    options = {"heartbeat": None}
    async with (
        Kernel(transport="tcp://127.0.0.1:0", transport_options=options) as a,
        Kernel(transport="tcp://127.0.0.1:0", transport_options=options) as b,
    ):
        yield a, b


def batched_items(frames: list[Any]) -> int:
    return sum(len(f.envelopes) for f in frames if isinstance(f, Batch))


def transport(scheme: str, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    if scheme == "tcp":
        return "tcp://127.0.0.1:0", {"heartbeat": None}
    return request.getfixturevalue("nats_server").url, {}


# -- 1. many tells in one pass -------------------------------------------------------------

TELLS = 2_000


@pytest.mark.parametrize("scheme", ["tcp", "nats"])
async def test_tells_sent_in_one_pass_arrive_in_order_and_mostly_in_batch_frames(
    scheme: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = transport(scheme, request)
    async with (
        Kernel(transport=url, transport_options=options) as a,
        Kernel(transport=url, transport_options=options) as b,
    ):
        b.register(Log)
        assert b.address is not None
        ref = a.ref(Log, "x", node=b.address)
        assert await ref.ask(Ping(n=-1), timeout=WAIT) == Pong(n=-1)  # the link is up
        passed = asyncio.Event()
        asyncio.get_running_loop().call_soon(passed.set)  # (runs if a tell waits)
        with frames_decoded(b, monkeypatch) as frames:
            for n in range(TELLS):
                await ref.tell(Numbered(n=n))
            waited = passed.is_set()
            await until(lambda: count("x") == TELLS + 1)
        assert [n for _, n, _ in Log.seen["x"][1:]] == list(range(TELLS))
        stats = b.delivery_stats()
        assert (stats.gaps, stats.out_of_order) == (0, 0)
        # Most came in batch frames: far fewer frames than messages.
        assert batched_items(frames) >= TELLS * 0.9
        assert len(frames) <= TELLS // 20
        # And no tell waited: one loop pass (sent alone, 2,000 frames would have filled
        # the send queue of 1,024).
        assert not waited


async def _tell_in_one_pass(mailbox_size: int, timing: int) -> int:
    """200 tells in one pass to a ``wait`` mailbox of ``mailbox_size`` on a node that
    times one message in ``timing``: check they arrive in order; how many were timed."""
    async with (
        Kernel(transport="tcp://127.0.0.1:0") as a,
        Kernel(transport="tcp://127.0.0.1:0", timing=timing) as b,
    ):
        b.register(Log, mailbox_size=mailbox_size, overflow="wait")
        assert b.address is not None
        ref = a.ref(Log, "x", node=b.address)
        assert await ref.ask(Ping(n=-1), timeout=WAIT) == Pong(n=-1)
        before = b.timings()["Log"].wait.count
        for n in range(200):  # one pass: batches of up to 256
            await ref.tell(Numbered(n=n))
        await until(lambda: count("x") == 201)
        assert [n for _, n, _ in Log.seen["x"][1:]] == list(range(200))
        return b.timings()["Log"].wait.count - before


async def test_a_batch_into_a_small_mailbox_fills_it_then_waits_in_order() -> None:
    # A batch's messages go into the agent's mailbox at once as far as it has room
    # (Activation.put_many); the rest wait for room, in order.
    await _tell_in_one_pass(mailbox_size=10, timing=1)


async def test_the_messages_of_a_batch_are_timed_like_any_other() -> None:
    # A node that times one message in N (by message id) times the batched ones too.
    timed = await _tell_in_one_pass(mailbox_size=1000, timing=4)
    assert 200 // 4 - 2 <= timed <= 200 // 4 + 2


# -- 2. interleaved routing in one pass -------------------------------------------------------


async def test_interleaved_targets_kinds_and_headers_in_one_pass_keep_each_targets_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(5)
    async with two_nodes() as (a, b):
        b.register(Log)
        assert b.address is not None
        refs = {key: a.ref(Log, key, node=b.address) for key in ("x", "y")}
        for ref in refs.values():
            assert await ref.ask(Ping(n=-1), timeout=WAIT) == Pong(n=-1)
        # A program of runs: to x or y, tells or asks, now and then a tell with a header.
        expected: dict[str, list[tuple[str, int, Any]]] = {"x": [], "y": []}
        sends: list[Any] = []
        answers: list[Pong | None] = []
        key, kind = "x", "tell"
        for n in range(600):
            if rng.random() < 0.2:
                key = "y" if key == "x" else "x"
            if rng.random() < 0.15:
                kind = "ask" if kind == "tell" else "tell"
            ref = refs[key]
            if kind == "ask":
                sends.append(ref.ask(Ping(n=n), timeout=WAIT))
                expected[key].append(("ask", n))
                answers.append(Pong(n=n))
                continue
            answers.append(None)
            if rng.random() < 0.05:
                sends.append(ref.tell(Numbered(n=n), headers={"h": f"h{n}"}))
                expected[key].append(("tell", n, f"h{n}"))
            else:
                sends.append(ref.tell(Numbered(n=n)))
                expected[key].append(("tell", n, None))
        with frames_decoded(b, monkeypatch) as frames:
            # Each send's first step runs in the next loop pass, in this order; the
            # asks wait there for their replies, the tells return.
            async with asyncio.timeout(WAIT):
                replies = await asyncio.gather(*sends)
            await until(lambda: count("x") + count("y") == 602)
        assert replies == answers  # each ask its own reply, each tell None
        for key in ("x", "y"):
            got = [(kind, n) if kind == "ask" else (kind, n, h) for kind, n, h in Log.seen[key][1:]]
            assert got == expected[key]
        assert batched_items(frames) > 100  # the runs went in batches
        stats = b.delivery_stats()
        assert (stats.gaps, stats.out_of_order) == (0, 0)


# -- 3. concurrent asks -------------------------------------------------------------------------


async def test_concurrent_asks_in_one_pass_get_their_own_replies_and_deadlines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with two_nodes() as (a, b):
        b.register(Log)
        assert b.address is not None
        ref = a.ref(Log, "x", node=b.address)
        assert await ref.ask(Ping(n=-1), timeout=WAIT) == Pong(n=-1)
        loop = asyncio.get_running_loop()
        with frames_decoded(b, monkeypatch) as frames:
            started = loop.time()
            # 64 asks, each with a timeout of its own (30 s, 31 s, ...): one pass
            async with asyncio.timeout(WAIT):
                replies = await asyncio.gather(
                    *(ref.ask(Ping(n=n), timeout=30.0 + n) for n in range(64))
                )
            asked = loop.time()
        assert replies == [Pong(n=n) for n in range(64)]
        # The first two went alone (the second, with no frame received since the first,
        # made the peer hot: kerna._send_batch), the rest in one batch.
        assert batched_items(frames) == 62
        seen = {n: deadline for kind, n, deadline in Log.seen["x"][1:]}
        assert sorted(seen) == list(range(64))
        for n, deadline in seen.items():
            # what the asker set, within the time the asks took to start (one clock here)
            assert started + 30.0 + n - 0.001 <= deadline <= asked + 30.0 + n, n


# -- a raw peer: a transport that speaks kerna's wire by hand -----------------------------------


def _types() -> MessageTypes:
    types = MessageTypes()
    types.add_all([Numbered, Ping, Pong])
    return types


def document(*, reads_batches: bool) -> bytes:
    """This version's schema document; without ``WIRE_KEY``: an older node's."""
    sent = json.loads(zlib.decompress(SchemaExchange(_types()).document()))
    if not reads_batches:
        del sent[WIRE_KEY]
    return zlib.compress(json.dumps(sent, sort_keys=True).encode())


class RawPeer:
    """A tcp transport with no kernel: what it receives, decoded by its own codec."""

    def __init__(self, schema: bytes) -> None:
        self.transport = open_transport("tcp://127.0.0.1:0", heartbeat=None)
        self.transport.schema = schema  # (a tcp transport's handshake sends it)
        self.codec = WireCodec(_types())
        self.received: list[Any] = []
        self.arrived = asyncio.Event()

    @property
    def address(self) -> str:
        return self.transport.address

    def on_frame(self, peer: str, frame: bytes) -> None:
        self.received.append(self.codec.decode(frame, peer))
        self.arrived.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not condition():
                self.arrived.clear()
                await self.arrived.wait()

    def replies(self) -> dict[int, Any]:
        """The replies received, by the id of the ask each answers (the error itself
        for an error reply)."""
        return {r.id: r.value if r.error is None else r.error for r in self.received}


@asynccontextmanager
async def raw_peer(schema: bytes) -> AsyncIterator[RawPeer]:
    peer = RawPeer(schema)
    await peer.transport.start(peer.on_frame, lambda peer, error: None)
    try:
        yield peer
    finally:
        await peer.transport.aclose()


# -- 4. a peer that does not read batches -------------------------------------------------------


@pytest.mark.parametrize("reads", [False, True], ids=["older-peer", "batch-reader"])
async def test_a_peer_whose_schema_document_lacks_the_wire_key_gets_only_delivery_frames(
    reads: bool,
) -> None:
    async with (
        raw_peer(document(reads_batches=reads)) as peer,
        Kernel(transport="tcp://127.0.0.1:0", transport_options={"heartbeat": None}) as a,
    ):
        ref = a.ref("Log", "x", node=peer.address)
        await ref.tell(Numbered(n=-1))  # connects (and handshakes) first
        for n in range(500):  # one loop pass
            await ref.tell(Numbered(n=n))
        messages: list[int] = []

        def unpacked() -> list[int]:
            messages.clear()
            for frame in peer.received:
                if isinstance(frame, Batch):
                    messages.extend(env.payload.n for env in frame.envelopes)
                else:
                    messages.append(frame.message.n)
            return messages

        await peer.until(lambda: len(unpacked()) == 501)
        assert messages == list(range(-1, 500))  # everything, in order
        kinds = {type(frame) for frame in peer.received}
        if reads:  # the control: the same sends to a peer that reads them are batched
            assert Batch in kinds
        else:
            assert kinds == {Delivery}


async def test_a_hot_peer_that_comes_back_as_an_older_node_gets_only_delivery_frames() -> None:
    # Batching for a peer is decided again at each pass from what it said last: a peer
    # that restarted as an older node (its new handshake's document has no WIRE_KEY)
    # gets no more batch frames, even while it is hot.
    options = {"heartbeat": None}
    async with (
        raw_peer(document(reads_batches=True)) as peer,
        Kernel(transport="tcp://127.0.0.1:0", transport_options=options) as a,
    ):
        assert a.address is not None
        ref = a.ref("Log", "x", node=peer.address)
        await ref.tell(Numbered(n=-1))  # the link is up
        await peer.until(lambda: len(peer.received) == 1)
        for n in range(50):  # one pass: the peer turns hot, the rest go in a batch
            await ref.tell(Numbered(n=n))
        await peer.until(lambda: batched_items(peer.received) > 0)
        # It says it is an older node: its next handshake with this node says so.
        peer.transport.schema = document(reads_batches=False)
        remote = a._runtime.remote  # noqa: SLF001 - what the peer said, on this side
        assert remote is not None
        said = remote.transport.peer_info(peer.address)
        await peer.transport.send(a.address, peer.codec.encode_error(1, ValueError("x")))
        async with asyncio.timeout(WAIT):
            while remote.transport.peer_info(peer.address) is said:  # noqa: ASYNC110
                await asyncio.sleep(0.001)  # (no event says a handshake was received)
        before = len(peer.received)
        for n in range(50, 100):  # one pass again, the peer still hot
            await ref.tell(Numbered(n=n))

        def arrived() -> int:
            frames = peer.received[before:]
            return batched_items(frames) + sum(type(f) is Delivery for f in frames)

        await peer.until(lambda: arrived() == 50)
        assert all(type(frame) is Delivery for frame in peer.received[before:])


# -- 5. hostile or bad batch frames from a raw peer ---------------------------------------------


def item(message_id: int, payload: Any, **fields: Any) -> ItemOut:
    """A batch item; ``payload`` a Message (encoded as a node would) or raw msgpack."""
    raw = _WIRE.encode_payload(payload) if isinstance(payload, Message) else payload
    return ItemOut(message_id, msgspec.Raw(raw), **fields)


def batch(kind: int, tag: str, key: str | None, items: list[Any], **fields: Any) -> bytes:
    return msgspec.msgpack.encode(BatchOut(kind, tag, "Log", key, items, **fields))


_WIRE = WireCodec(_types())
PING, NUMBERED = "test.batches.Ping", "test.batches.Numbered"  # their wire tags
NOT_A_PING = msgspec.msgpack.encode({"type": "test.batches.Ping", "n": "one"})
NOT_A_NUMBERED = msgspec.msgpack.encode({"type": "test.batches.Numbered", "n": [1]})


@pytest.fixture
async def target(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Kernel, Counter[str]]]:
    """A node with ``Log`` registered, and its codec's refusal counts."""
    async with Kernel(transport="tcp://127.0.0.1:0", transport_options={"heartbeat": None}) as b:
        b.register(Log)
        remote = b._runtime.remote  # noqa: SLF001 - the refusals its codec counts
        assert remote is not None
        yield b, remote.codec.errors


async def test_a_batch_item_that_does_not_match_its_type_is_refused_alone(
    target: tuple[Kernel, Counter[str]],
) -> None:
    b, errors = target
    assert b.address is not None
    async with raw_peer(document(reads_batches=True)) as peer:
        asks = [item(101, Ping(n=1)), item(102, NOT_A_PING), item(103, Ping(n=3))]
        tells = [item(201, Numbered(n=7)), item(202, NOT_A_NUMBERED), item(203, Numbered(n=9))]
        await peer.transport.send(b.address, batch(ASK, PING, "x", asks, reply_to=peer.address))
        await peer.transport.send(b.address, batch(TELL, NUMBERED, "x", tells))
        await peer.until(lambda: len(peer.received) == 3)
        await until(lambda: count("x") == 4)
        replies = peer.replies()
        assert replies[101] == Pong(n=1)
        assert replies[103] == Pong(n=3)
        error = replies[102]  # its own error reply, naming why
        assert isinstance(error, RemoteError)
        assert error.type_name.endswith("WireError")
        assert "bad_payload" in error.message
        assert "test.batches.Ping" in error.message
        assert [(kind, n) for kind, n, _ in Log.seen["x"]] == [
            ("ask", 1), ("ask", 3), ("tell", 7), ("tell", 9),
        ]  # fmt: skip
        dead = b.dead_letters(reason=DeadLetterReason.UNDECODABLE)
        assert [record.message_id for record in dead] == [202]  # the tell: a dead letter
        assert errors == Counter({"bad_payload": 2})


async def test_a_batch_whose_kind_and_key_do_not_match_refuses_every_item(
    target: tuple[Kernel, Counter[str]],
) -> None:
    b, errors = target
    assert b.address is not None
    async with raw_peer(document(reads_batches=True)) as peer:
        # asks without an agent key: each answered with its error
        asks = [item(301, Ping(n=1)), item(302, Ping(n=2))]
        await peer.transport.send(b.address, batch(ASK, PING, None, asks, reply_to=peer.address))
        await peer.until(lambda: len(peer.received) == 2)
        replies = peer.replies()
        assert sorted(replies) == [301, 302]
        for error in replies.values():
            assert isinstance(error, RemoteError)
            assert "malformed" in error.message
            assert "without an agent key" in error.message
        # an event addressed to an agent: each item a dead letter
        events = [item(401, Numbered(n=1)), item(402, Numbered(n=2)), item(403, Numbered(n=3))]
        await peer.transport.send(b.address, batch(EVENT, NUMBERED, "x", events))
        await peer.transport.send(  # and an ask behind them, to know they were read
            b.address,
            batch(ASK, PING, "x", [item(404, Ping(n=4))], reply_to=peer.address),
        )
        await peer.until(lambda: 404 in peer.replies())
        assert peer.replies()[404] == Pong(n=4)
        dead = b.dead_letters(reason=DeadLetterReason.UNDECODABLE)
        assert [record.message_id for record in dead] == [401, 402, 403]
        assert [(kind, n) for kind, n, _ in Log.seen["x"]] == [("ask", 4)]
        assert errors == Counter({"malformed": 5})  # each refused item counted


@pytest.mark.parametrize(
    "frame",
    [
        batch(TELL, NUMBERED, "x", []),
        batch(TELL, NUMBERED, "x", [item(1, Numbered(n=1)), item(-1, Numbered(n=2))]),
        batch(
            ASK, PING, "x", [item(1, Ping(n=1), remaining=float("nan"))],
            reply_to="tcp://127.0.0.1:1",
        ),
        # more items than a sender ever gathers (a hostile peer's frame of millions
        # would be decoded and delivered in one callback, each an object)
        batch(TELL, NUMBERED, "x", [item(n + 1, Numbered(n=n)) for n in range(MAX_ITEMS + 1)]),
    ],
    ids=["no-items", "negative-id", "nan-remaining", "too-many-items"],
)  # fmt: skip
async def test_a_malformed_batch_delivers_nothing_and_the_connection_carries_on(
    target: tuple[Kernel, Counter[str]], frame: bytes
) -> None:
    b, errors = target
    assert b.address is not None
    async with raw_peer(document(reads_batches=True)) as peer:
        await peer.transport.send(b.address, frame)
        good = batch(ASK, PING, "x", [item(9, Ping(n=9))], reply_to=peer.address)
        await peer.transport.send(b.address, good)  # the same connection, after it
        await peer.until(lambda: 9 in peer.replies())
        assert peer.replies() == {9: Pong(n=9)}
        assert [(kind, n) for kind, n, _ in Log.seen["x"]] == [("ask", 9)]
        assert errors == Counter({"malformed": 1})
        dead = b.dead_letters(reason=DeadLetterReason.UNDECODABLE)
        assert [record.message for record in dead] == [None]  # the frame, refused whole


def test_a_batch_of_more_items_than_a_sender_gathers_is_refused_before_they_are_decoded() -> None:
    codec = WireCodec(_types())
    fits = [item(n + 1, Numbered(n=n)) for n in range(MAX_ITEMS)]
    decoded = codec.decode(batch(TELL, NUMBERED, "x", fits), "tcp://peer")
    assert isinstance(decoded, Batch)
    assert len(decoded.envelopes) == MAX_ITEMS
    for extra in (item(0, Numbered(n=0)), item(0, NOT_A_NUMBERED)):  # typed, one by one
        with pytest.raises(WireError) as refused:
            codec.decode(batch(TELL, NUMBERED, "x", [*fits, extra]), "tcp://peer")
        assert refused.value.reason == "malformed"
        assert f"<= {MAX_ITEMS}" in str(refused.value)
        assert refused.value.peer == "tcp://peer"


# -- 6. a batch that cannot be queued at once, or at all -----------------------------------------


async def test_a_batch_that_finds_the_send_queue_full_waits_in_order_with_later_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A send queue of one frame: the batch, full (MAX_BYTES) in the pass its first
    # message was queued in, finds the queue full and waits in the peer's Backlog;
    # the tells after it join that backlog (and wait).
    options = {"heartbeat": None, "send_queue": 1}
    async with (
        Kernel(transport="tcp://127.0.0.1:0", transport_options=options) as a,
        Kernel(transport="tcp://127.0.0.1:0", transport_options={"heartbeat": None}) as b,
    ):
        b.register(Log)
        assert b.address is not None
        ref = a.ref(Log, "x", node=b.address)
        assert await ref.ask(Ping(n=-1), timeout=WAIT) == Pong(n=-1)
        passed = asyncio.Event()
        asyncio.get_running_loop().call_soon(passed.set)  # runs once the tells yield
        with frames_decoded(b, monkeypatch) as frames:
            async with asyncio.timeout(WAIT):
                for n in range(MAX_ITEMS + 300):
                    await ref.tell(Numbered(n=n))
                    if n == MAX_ITEMS:
                        waited = passed.is_set()  # the tell after the batch waited
            await until(lambda: count("x") == MAX_ITEMS + 301)
        assert waited
        assert [n for _, n, _ in Log.seen["x"][1:]] == list(range(MAX_ITEMS + 300))
        assert batched_items(frames) >= MAX_ITEMS
        stats = b.delivery_stats()
        assert (stats.gaps, stats.out_of_order) == (0, 0)


class Blob(Message, tag="test.batches.Blob"):
    data: bytes


class StalledPeer:
    """A raw tcp peer that reads batches and stops reading after its first frame."""

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.transport = open_transport("tcp://127.0.0.1:0", heartbeat=None)
        self.transport.schema = document(reads_batches=True)

    def on_frame(self, peer: str, frame: bytes) -> asyncio.Future[None]:
        self.first.set()
        return asyncio.get_running_loop().create_future()  # never: no more from peer

    async def fill_the_sockets(self, ref: AgentRef) -> None:
        """Once it has its first frame, send a message bigger than the sockets hold (a
        paused reader's buffer stops growing): the connection's writer then waits for
        them to drain, and frames stay queued."""
        await ref.tell(Numbered(n=-1))
        async with asyncio.timeout(WAIT):
            await self.first.wait()
        await ref.tell(Blob(data=bytes(24 * 1024 * 1024)))
        for _ in range(3):  # the connection's writer starts waiting for them to drain
            await asyncio.sleep(0)


@asynccontextmanager
async def stalled_peer() -> AsyncIterator[StalledPeer]:
    peer = StalledPeer()
    await peer.transport.start(peer.on_frame, lambda peer, error: None)
    try:
        yield peer
    finally:
        await peer.transport.aclose()


def tell_in_one_pass(ref: AgentRef, n: int) -> asyncio.Future[None]:
    async def tells() -> None:
        for i in range(n):
            await ref.tell(Numbered(n=i))

    return asyncio.ensure_future(tells())


@pytest.mark.parametrize("kind", ["tell", "ask"])
async def test_a_batch_that_cannot_be_sent_fails_its_asks_and_dead_letters_its_tells(
    kind: str,
) -> None:
    # A peer that stops reading after its first frame, the sockets full, a send queue
    # of one frame: the next pass's first message takes the queue's room, the batch
    # behind it waits in the Backlog. Then the peer goes away.
    options = {"heartbeat": None, "send_queue": 1, "reconnect_attempts": 0}
    async with (
        stalled_peer() as peer,
        Kernel(transport="tcp://127.0.0.1:0", transport_options=options) as a,
    ):
        ref = a.ref("Log", "x", node=peer.transport.address)
        await peer.fill_the_sockets(ref)
        n = MAX_ITEMS + 20
        sending: asyncio.Future[Any]
        if kind == "tell":
            sending = tell_in_one_pass(ref, n)
        else:
            sending = asyncio.gather(
                *(ref.ask(Ping(n=i), timeout=WAIT) for i in range(n)), return_exceptions=True
            )
        await asyncio.sleep(0)  # (their first steps: the batch is in the backlog)
        await peer.transport.aclose()
        async with asyncio.timeout(WAIT):
            if kind == "tell":
                with pytest.raises(PeerUnreachable):  # a tell that waited alone
                    await sending
                dead = a.dead_letters(reason=DeadLetterReason.NOT_DELIVERED)
                # the batch: the tells after the pass's first, as many as it took
                assert [record.message.n for record in dead] == list(range(1, len(dead) + 1))
                assert len(dead) > 100
                assert all("PeerUnreachable" in (r.error or "") for r in dead), dead[0]
            else:
                failed = await sending  # (the lost peer fails them: NodeLost)
                assert all(isinstance(error, PeerUnreachable) for error in failed), failed


async def test_batched_tells_still_waiting_when_the_kernel_stops_are_dead_letters_named_so() -> (
    None
):
    # As above (a peer that stops reading, sockets full, a send queue of one frame):
    # the batch waits in the Backlog; then the sending kernel stops.
    options = {"heartbeat": None, "send_queue": 1}
    async with stalled_peer() as peer:
        a = Kernel(transport="tcp://127.0.0.1:0", transport_options=options)
        async with a:
            ref = a.ref("Log", "x", node=peer.transport.address)
            await peer.fill_the_sockets(ref)
            sending = tell_in_one_pass(ref, MAX_ITEMS + 20)
            await asyncio.sleep(0)  # (its first steps: the batch is in the backlog)
        async with asyncio.timeout(WAIT):
            with pytest.raises(KernelStopped):  # the tell that waited alone
                await sending
        dead = a.dead_letters()
        assert len(dead) > 100  # the batch: the tells after the pass's first
        reasons = {record.reason for record in dead}
        assert reasons == {DeadLetterReason.KERNEL_STOPPED}, dead[0].error


# -- 7. what a pass gathered goes before a reply, and before the link closes --------------------


class Relay(Request[int], tag="test.batches.Relay"):
    to: str  # the asker's node
    tells: int


class Relayer(Agent):
    @handler
    async def relay(self, msg: Relay) -> int:
        ref = self.kernel.ref(Log, "r", node=msg.to)
        for n in range(msg.tells):  # one step of this worker: gathered for msg.to
            await ref.tell(Numbered(n=n))
        return msg.tells  # the reply to the same node, in the same step


async def test_a_reply_is_not_sent_before_the_deliveries_gathered_for_its_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with two_nodes() as (a, b):
        a.register(Log)
        b.register(Relayer)
        assert a.address is not None
        assert b.address is not None
        ref = a.ref(Relayer, "r", node=b.address)
        assert await ref.ask(Relay(to=a.address, tells=1), timeout=WAIT) == 1  # links up
        await until(lambda: count("r") == 1)
        Log.seen.clear()
        with frames_decoded(a, monkeypatch) as frames:
            assert await ref.ask(Relay(to=a.address, tells=100), timeout=WAIT) == 100
            kinds = [type(frame).__name__ for frame in frames]
            await until(lambda: count("r") == 100)
        # Two alone (the peer turns hot at the second), the batch, then the reply.
        assert kinds == ["Delivery", "Delivery", "Batch", "Reply"], kinds
        assert [n for _, n, _ in Log.seen["r"]] == list(range(100))


async def test_closing_the_link_sends_what_the_pass_gathered_first() -> None:
    async with two_nodes() as (a, b):
        b.register(Log)
        assert b.address is not None
        ref = a.ref(Log, "x", node=b.address)
        assert await ref.ask(Ping(n=-1), timeout=WAIT) == Pong(n=-1)
        remote = a._runtime.remote  # noqa: SLF001 - its close, in the pass of the sends
        assert remote is not None
        loop = asyncio.get_running_loop()
        for n in range(100):
            await ref.tell(Numbered(n=n))
        # What a stopping kernel does last (Lifecycle), here before the pass ends.
        await remote.aclose(loop.time() + WAIT)
        await until(lambda: count("x") == 101)
        assert [n for _, n, _ in Log.seen["x"][1:]] == list(range(100))


class Note(Message, tag="test.batches.Note"):
    n: int
    text: str


class Question(Request[int], tag="test.batches.Question"):
    n: int
    text: str


class Notes(Agent):
    seen: ClassVar[list[int]] = []
    deadlines: ClassVar[dict[int, float | None]] = {}

    @handler
    async def note(self, msg: Note) -> None:
        Notes.seen.append(msg.n)
        Log.changed.set()

    @handler
    async def question(self, msg: Question) -> int:
        Notes.deadlines[msg.n] = self.context.deadline
        return msg.n


async def test_messages_that_fit_the_frame_limit_alone_are_not_lost_for_being_batched() -> None:
    # A peer whose frames are limited to 1 KiB: each message fits alone, ten do not.
    options = {"heartbeat": None, "max_frame_size": 1024}
    Notes.seen = []
    async with (
        Kernel(transport="tcp://127.0.0.1:0", transport_options=options) as a,
        Kernel(transport="tcp://127.0.0.1:0", transport_options=options) as b,
    ):
        b.register(Notes)
        assert b.address is not None
        ref = a.ref(Notes, "n", node=b.address)
        await ref.tell(Note(n=-1, text=""))
        await until(lambda: len(Notes.seen) == 1)
        for n in range(10):  # one pass
            await ref.tell(Note(n=n, text="x" * 300))
        await until(lambda: len(Notes.seen) == 11)
        assert Notes.seen == list(range(-1, 10))
        assert a.dead_letters() == []
        # asks too, each with its deadline (30 s, 31 s, ...) in whichever part it went
        Notes.deadlines = {}
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(WAIT):
            answers = await asyncio.gather(
                *(ref.ask(Question(n=n, text="x" * 300), timeout=30.0 + n) for n in range(10))
            )
        assert answers == list(range(10))
        for n, deadline in Notes.deadlines.items():
            assert deadline is not None
            assert started + 30.0 + n - 0.001 <= deadline <= started + 30.0 + n + WAIT, n
        # A message within the limit whose frame is not, even alone: a lone tell of it
        # raises; batched (its sender has returned) it is a dead letter, named so.
        over = Note(n=99, text="x" * 975)
        with pytest.raises(WireError, match="too_large"):
            await ref.tell(over)
        await ref.tell(Note(n=10, text=""))
        await ref.tell(over)  # (the pass's second: batched)
        await until(lambda: len(Notes.seen) == 12)
        [dead] = a.dead_letters()
        assert dead.message == over
        assert "too_large" in (dead.error or "")
        # ... and such an ask, batched, fails its asker with the error that says why
        async with asyncio.timeout(WAIT):
            got = await asyncio.gather(
                ref.ask(Question(n=100, text=""), timeout=WAIT),
                ref.ask(Question(n=101, text="x" * 960), timeout=WAIT),
                return_exceptions=True,
            )
        assert got[0] == 100
        assert isinstance(got[1], WireError)
        assert got[1].reason == "too_large"
