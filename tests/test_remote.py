"""Two kernels, one process, over inproc://: remote tells, asks, replies and errors take
the same delivery path as local ones (kerna._remote)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kerna import (
    Agent,
    AskTimeout,
    ConfigError,
    Kernel,
    KernelStopped,
    Message,
    PendingReply,
    RemoteError,
    Request,
    handler,
)
from kerna._envelope import ASK, Envelope
from kerna._ids import AgentId
from kerna._wire import Reply, WireCodec
from kerna.transports import open_transport

pytestmark = pytest.mark.anyio


class Pong(Message):
    n: int


class Ping(Request[Pong]):
    n: int


class Note(Message):
    text: str


class Stall(Request[str]):
    pass


class Boom(Request[str]):
    pass


class Echo(Agent):
    notes: list[str] = []
    noted = asyncio.Event()
    stalled = asyncio.Event()

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n + 1)

    @handler
    async def note(self, msg: Note) -> None:
        Echo.notes.append(f"{msg.text} from {self.context.sender} ({self.context.kind})")
        Echo.noted.set()

    @handler
    async def stall(self, msg: Stall) -> str:
        Echo.stalled.set()
        await asyncio.sleep(10)  # past every asker's deadline (stop cancels it)
        return "late"

    @handler
    async def boom(self, msg: Boom) -> str:
        raise ValueError("kaputt")


class Relay(Agent):
    @handler
    async def relay(self, msg: Note) -> None:  # tells the other node from a handler
        await self.kernel.ref("Echo", "e", node=msg.text).tell(Note(text="relayed"))


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[Kernel, Kernel]]:
    Echo.notes = []
    Echo.noted = asyncio.Event()
    Echo.stalled = asyncio.Event()
    async with (
        Kernel(transport="inproc://", stop_grace=0.1) as a,
        Kernel(transport="inproc://", stop_grace=0.1) as b,
    ):
        b.register(Echo)
        yield a, b


async def test_an_ask_to_another_node_returns_the_typed_reply(
    nodes: tuple[Kernel, Kernel],
) -> None:
    a, b = nodes
    assert b.address is not None
    assert b.address != a.address
    pong = await a.ref("Echo", "e", node=b.address).ask(Ping(n=1), timeout=2)
    assert pong == Pong(n=2)
    assert b.stats().types["Echo"].handled == 1


async def test_a_tell_from_a_handler_reaches_the_other_node_with_its_sender(
    nodes: tuple[Kernel, Kernel],
) -> None:
    a, b = nodes
    assert b.address is not None
    a.register(Relay)
    await a.ref(Relay, "r").tell(Note(text=b.address))
    async with asyncio.timeout(2):
        await Echo.noted.wait()
    assert Echo.notes == ["relayed from Relay/r (tell)"]


async def test_a_remote_handler_failure_reaches_the_asker_as_remote_error(
    nodes: tuple[Kernel, Kernel],
) -> None:
    a, b = nodes
    with pytest.raises(RemoteError, match="kaputt") as caught:
        await a.ref("Echo", "e", node=b.address).ask(Boom(), timeout=2)
    assert caught.value.type_name.endswith("ValueError")
    assert (await a.ref("Echo", "e", node=b.address).ask(Ping(n=5), timeout=2)).n == 6


async def test_an_unknown_remote_agent_type_is_an_error_reply_not_a_hang(
    nodes: tuple[Kernel, Kernel],
) -> None:
    a, b = nodes
    with pytest.raises(RemoteError, match="UnknownAgent"):
        await a.ref("Nobody", "x", node=b.address).ask(Ping(n=1), timeout=2)


async def test_a_remote_ask_times_out_at_its_deadline(nodes: tuple[Kernel, Kernel]) -> None:
    a, b = nodes
    with pytest.raises(AskTimeout):
        await a.ref("Echo", "e", node=b.address).ask(Stall(), timeout=0.05)


async def test_a_ref_to_a_node_needs_a_transport() -> None:
    async with Kernel() as kernel:
        with pytest.raises(ConfigError, match="no transport"):
            kernel.ref("Echo", "e", node="inproc://elsewhere")
        assert kernel.address is None


async def test_a_bad_transport_url_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="pigeon"):
        Kernel(transport="pigeon://coop")


async def test_asks_waiting_on_a_node_fail_when_this_kernel_stops() -> None:
    Echo.stalled = asyncio.Event()
    async with Kernel(transport="inproc://", stop_grace=0.1) as b:
        b.register(Echo)
        a = Kernel(transport="inproc://")
        await a.start()
        ask = asyncio.ensure_future(a.ref("Echo", "e", node=b.address).ask(Stall(), timeout=5))
        async with asyncio.timeout(2):
            await Echo.stalled.wait()
        await a.stop(grace=0)
        with pytest.raises(KernelStopped):
            await ask


async def test_a_frame_that_does_not_decode_is_a_dead_letter_and_good_traffic_flows(
    nodes: tuple[Kernel, Kernel],
) -> None:
    a, b = nodes
    assert b.address is not None
    raw = open_transport("inproc://")
    await raw.start(lambda peer, frame: None, lambda peer, error: None)
    try:
        before = b.stats().dead_letters
        for garbage in (b"", b"\xc1", b"\x93\x01\x02", bytes(range(256)) * 4):
            await raw.send(b.address, garbage)
        pong = await a.ref("Echo", "e", node=b.address).ask(Ping(n=41), timeout=2)
        assert pong == Pong(n=42)  # the bad frames cost the good traffic nothing
        assert b.stats().dead_letters == before + 4
    finally:
        await raw.aclose()


async def test_a_tell_to_an_unknown_remote_type_is_a_dead_letter_there(
    nodes: tuple[Kernel, Kernel],
) -> None:
    a, b = nodes
    before = b.stats().dead_letters
    await a.ref("Nobody", "x", node=b.address).tell(Note(text="lost"))
    await a.ref("Echo", "e", node=b.address).ask(Ping(n=0), timeout=2)  # after the tell
    assert b.stats().dead_letters == before + 1


async def test_concurrent_askers_on_two_nodes_each_get_their_own_replies() -> None:
    async with (
        Kernel(transport="inproc://", stop_grace=0.1) as server,
        Kernel(transport="inproc://", stop_grace=0.1) as first,
        Kernel(transport="inproc://", stop_grace=0.1) as second,
    ):
        server.register(Echo)

        async def ask_many(kernel: Kernel, base: int) -> list[int]:
            ref = kernel.ref("Echo", "shared", node=server.address)
            replies = await asyncio.gather(
                *(ref.ask(Ping(n=base + i), timeout=5) for i in range(200))
            )
            return [reply.n for reply in replies]

        got_first, got_second = await asyncio.gather(ask_many(first, 0), ask_many(second, 10_000))
        assert got_first == [i + 1 for i in range(200)]
        assert got_second == [10_000 + i + 1 for i in range(200)]


async def test_a_reply_goes_to_the_node_the_ask_came_from_never_to_an_address_it_names(
    nodes: tuple[Kernel, Kernel],
) -> None:
    _, b = nodes
    assert b.address is not None
    got: list[bytes] = []
    victim_got: list[bytes] = []
    arrived = asyncio.Event()

    def on_frame(peer: str, frame: bytes) -> None:
        got.append(frame)
        arrived.set()

    asker = open_transport("inproc://")
    victim = open_transport("inproc://")
    await asker.start(on_frame, lambda peer, error: None)
    await victim.start(lambda peer, frame: victim_got.append(frame), lambda p, e: None)
    try:
        codec = WireCodec()
        loop = asyncio.get_running_loop()
        env = Envelope(1, ASK, AgentId("Echo", "e"), Ping(n=1), None, 1, 0, loop.time() + 5)
        await asker.send(b.address, codec.encode(env, victim.address))  # names the victim
        async with asyncio.timeout(2):
            await arrived.wait()
        reply = codec.decode(got[0], b.address)
        assert isinstance(reply, Reply)
        assert reply.result() == Pong(n=2)
        assert victim_got == []
    finally:
        await asker.aclose()
        await victim.aclose()


class Slow(Request[str]):
    pass


class Deferring(Agent):
    waiting: PendingReply | None = None

    @handler
    async def slow(self, msg: Slow) -> PendingReply:
        Deferring.waiting = self.defer_reply()
        await self.ref(Deferring, "self").tell(Note(text="now"))
        return Deferring.waiting

    @handler
    async def note(self, msg: Note) -> None:
        assert Deferring.waiting is not None
        Deferring.waiting.reply(f"answered {msg.text}")


async def test_a_deferred_reply_reaches_an_asker_on_another_node(
    nodes: tuple[Kernel, Kernel],
) -> None:
    a, b = nodes
    b.register(Deferring)
    # the ask is answered by a later handler, on the other node, through the same reply
    reply = await a.ref(Deferring, "self", node=b.address).ask(Slow(), timeout=2)
    assert reply == "answered now"


class Hold(Request[str]):
    pass


class Holder(Agent):
    release: asyncio.Event
    holding: asyncio.Event

    @handler
    async def hold(self, msg: Hold) -> str:
        Holder.holding.set()
        await Holder.release.wait()
        return "held"

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


async def test_an_ask_whose_deadline_passed_while_queued_on_the_other_node_is_not_run() -> None:
    Holder.release, Holder.holding = asyncio.Event(), asyncio.Event()
    async with (
        Kernel(transport="inproc://", stop_grace=0.1) as a,
        Kernel(transport="inproc://", stop_grace=0.1) as b,
    ):
        b.register(Holder)
        ref = a.ref("Holder", "h", node=b.address)
        first = asyncio.ensure_future(ref.ask(Hold(), timeout=0.1))
        async with asyncio.timeout(5):
            await Holder.holding.wait()
        with pytest.raises(AskTimeout):  # queued behind the held ask on b
            await ref.ask(Ping(n=1), timeout=0.05)
        with pytest.raises(AskTimeout):
            await first
        Holder.release.set()  # the held handler finishes after its deadline
        async with asyncio.timeout(5):
            assert await ref.ask(Ping(n=2), timeout=5) == Pong(n=2)
        stats = b.stats().types["Holder"]
        assert (stats.handled, stats.expired, stats.late_replies) == (2, 1, 1)


async def test_asks_that_timed_out_on_another_node_are_forgotten() -> None:
    Holder.release, Holder.holding = asyncio.Event(), asyncio.Event()
    async with (
        Kernel(transport="inproc://", stop_grace=0.1) as a,
        Kernel(transport="inproc://", stop_grace=0.1) as b,
    ):
        b.register(Holder, mailbox_size=10_000)
        ref = a.ref("Holder", "h", node=b.address)
        held = asyncio.ensure_future(ref.ask(Hold(), timeout=5))
        async with asyncio.timeout(5):
            await Holder.holding.wait()
        for _ in range(3):  # no reply ever comes for these: b is held
            results = await asyncio.gather(
                *(ref.ask(Ping(n=i), timeout=0.01) for i in range(2000)), return_exceptions=True
            )
            assert all(isinstance(r, AskTimeout) for r in results)
        remote = a._runtime.remote  # noqa: SLF001 - the table of asks waiting on b
        assert remote is not None
        assert remote.waiting_asks() <= 2 * 2000 + 1
        Holder.release.set()
        assert await held == "held"


class Part(Message):
    n: int


class PartA(Part):
    pass


class PartB(Part, tag="test.part-b"):
    label: str = ""


class Parts(Agent):
    got: list[Part] = []
    arrived = asyncio.Event()

    @handler
    async def part(self, msg: Part) -> None:  # a base class: its subclasses come too
        Parts.got.append(msg)
        if len(Parts.got) == 2:
            Parts.arrived.set()


async def test_a_handler_of_a_base_class_gets_its_subclasses_from_another_node() -> None:
    Parts.got, Parts.arrived = [], asyncio.Event()
    async with (
        Kernel(transport="inproc://", stop_grace=0.1) as a,
        Kernel(transport="inproc://", stop_grace=0.1) as b,
    ):
        b.register(Parts)
        ref = a.ref("Parts", "p", node=b.address)
        await ref.tell(PartA(n=1))
        await ref.tell(PartB(n=2, label="b"))
        async with asyncio.timeout(5):
            await Parts.arrived.wait()
        assert Parts.got == [PartA(n=1), PartB(n=2, label="b")]
        assert b.stats().dead_letters == 0
