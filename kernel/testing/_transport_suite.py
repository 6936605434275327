"""The conformance suite every ``Transport`` passes (``kerna.testing.TransportSuite``).

kerna runs it against its own transports (tests/test_transport_conformance.py); a
third-party transport runs the same tests by subclassing it (see the class docstring).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Protocol

import pytest

from kerna.transports import (
    FrameTooLarge,
    PeerUnreachable,
    SendQueueFull,
    Transport,
    TransportClosed,
)

__all__ = ["TransportFactory", "TransportNode", "TransportSuite"]

WAIT = 10.0  # seconds any one wait of the suite may take before the test fails


class TransportFactory(Protocol):
    """``make_transport(url=None, **options)``: an unstarted transport.

    ``url=None`` asks for a fresh listening URL no other transport of the test uses
    (a ``tcp://127.0.0.1:0``, a new ``inproc://`` name, a new socket path); a ``url``
    is the ``address`` of a transport the test closed, to start a new one in its place.
    ``options`` (``max_frame_size``, ``send_queue``) go to the constructor.
    """

    def __call__(self, url: str | None = None, /, **options: Any) -> Transport: ...


class TransportNode:
    """A started transport and what its callbacks were given, in order."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.frames: list[tuple[str, bytes]] = []
        self.lost: list[tuple[str, BaseException | None]] = []
        self.raise_on: bytes | None = None  # on_frame raises for this frame (after recording)
        self.pause_on: bytes | None = None  # on_frame returns ``gate`` for this frame
        self.gate: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()

    @property
    def address(self) -> str:
        return self.transport.address

    def on_frame(self, peer: str, frame: bytes) -> asyncio.Future[None] | None:
        self.frames.append((peer, bytes(frame)))
        self._changed.set()
        if self.raise_on is not None and frame == self.raise_on:
            raise RuntimeError("a failing on_frame callback (the suite's)")
        if self.pause_on is not None and frame == self.pause_on:
            return self.gate
        return None

    def on_peer_lost(self, peer: str, error: BaseException | None) -> None:
        self.lost.append((peer, error))
        self._changed.set()

    def frames_from(self, peer: str) -> list[bytes]:
        return [frame for sender, frame in self.frames if sender == peer]

    def lost_peers(self) -> list[str]:
        return [peer for peer, _ in self.lost]

    async def until(self, done: Callable[[], bool], what: str) -> None:
        """Wait, at most ``WAIT`` seconds, until ``done()`` holds after a callback.

        Raises:
            AssertionError: it did not hold in time (names ``what``).
        """
        try:
            async with asyncio.timeout(WAIT):
                while not done():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.address}: no {what} within {WAIT} s "
                f"({len(self.frames)} frames received, peers lost: {self.lost_peers()})"
            ) from None

    async def receive(self, peer: str, count: int) -> list[bytes]:
        """The first ``count`` frames from ``peer``, waiting for them (bounded)."""
        await self.until(lambda: len(self.frames_from(peer)) >= count, f"{count} frames")
        return self.frames_from(peer)[:count]


class TransportNodes:
    """Starts transports for a test and closes them all when it ends."""

    def __init__(self, make_transport: TransportFactory) -> None:
        self._make = make_transport
        self._open: list[Transport] = []

    async def start(self, url: str | None = None, **options: Any) -> TransportNode:
        transport = self._make(url, **options)
        node = TransportNode(transport)
        async with asyncio.timeout(WAIT):
            await transport.start(node.on_frame, node.on_peer_lost)
        self._open.append(transport)  # a start that failed left nothing to close
        return node

    async def aclose(self) -> None:
        async with asyncio.timeout(WAIT):
            for transport in reversed(self._open):
                await transport.aclose()


class _StalledPeer:
    """A transport on an event loop of its own, in a thread, whose ``on_frame`` blocks
    that loop at the first frame until ``release()``: a peer that stops reading."""

    def __init__(self, make_transport: TransportFactory) -> None:
        self._make = make_transport
        self._test_loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()  # the test loop's, set from the thread
        self._released = threading.Event()
        self._started: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._lock = threading.Lock()
        self._frames: list[bytes] = []
        self._thread = threading.Thread(target=self._run, name="stalled peer", daemon=True)

    async def start(self) -> str:
        self._thread.start()
        async with asyncio.timeout(WAIT):
            return await asyncio.wrap_future(self._started)

    def release(self) -> None:
        self._released.set()

    def frames(self) -> list[bytes]:
        with self._lock:
            return list(self._frames)

    async def receive(self, count: int) -> list[bytes]:
        try:
            async with asyncio.timeout(WAIT):
                while len(self.frames()) < count:
                    self._arrived.clear()
                    if len(self.frames()) < count:
                        await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"the released peer got {len(self.frames())} of {count} frames in {WAIT} s"
            ) from None
        return self.frames()[:count]

    async def aclose(self) -> None:
        self.release()
        if self._stop is not None:
            loop, stop = self._stop
            loop.call_soon_threadsafe(stop.set)
        async with asyncio.timeout(WAIT):
            await asyncio.wrap_future(self._ended)
        self._thread.join(WAIT)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if not self._started.done():
                self._started.set_exception(exc)
            self._ended.set_exception(exc)
        else:
            self._ended.set_result(None)

    async def _main(self) -> None:
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        transport = self._make()
        await transport.start(self._on_frame, lambda peer, error: None)
        try:
            self._stop = (loop, stop)
            self._started.set_result(transport.address)
            await stop.wait()
        finally:
            await transport.aclose()

    def _on_frame(self, peer: str, frame: bytes) -> None:
        with self._lock:
            self._frames.append(bytes(frame[:8]))
        self._test_loop.call_soon_threadsafe(self._arrived.set)
        self._released.wait(WAIT)  # blocks this peer's loop: it reads nothing meanwhile


async def _connect(a: TransportNode, b: TransportNode) -> None:
    """One frame from ``a`` to ``b``, received: the pair is connected."""
    before = len(b.frames_from(a.address))
    await a.transport.send(b.address, b"hello")
    await b.receive(a.address, before + 1)


IDLE = 0.002
"""Seconds the connection is left idle before ``_fill``'s burst (a transport that writes
a frame on an idle connection at once, as tcp does, must still count it against the
queue until the burst's loop pass ends)."""


async def _fill(a: TransportNode, b: TransportNode, limit: int) -> list[bytes]:
    """After an idle moment, sends to ``b`` without waiting (and without yielding to the
    loop, so the queue cannot drain meanwhile) until ``a``'s queue is full; the frames
    it took."""
    await asyncio.sleep(IDLE)
    taken: list[bytes] = []
    for i in range(limit + 1):
        frame = b"fill-%d" % i
        try:
            await a.transport.send(b.address, frame, wait=False)
        except SendQueueFull:
            return taken
        taken.append(frame)
    raise AssertionError(f"a send queue of {limit} took {limit + 1} frames without waiting")


@pytest.mark.anyio
class TransportSuite:
    """The tests every transport passes; subclass it to run them on yours.

    A subclass named ``Test...`` gives it a ``make_transport`` fixture returning a
    factory ``make_transport(url=None, **options) -> Transport`` (see
    ``TransportFactory``): it returns an *unstarted* transport, for a fresh listening
    URL when ``url`` is None, or for ``url`` (a closed transport's ``address``, to
    restart on it); ``options`` (``max_frame_size``, ``send_queue``) go to its
    constructor. The suite starts, and at the end closes, every transport it makes::

        import pytest
        from kerna.transports import open_transport
        from kerna.testing import TransportSuite

        class TestMyTransport(TransportSuite):
            @pytest.fixture
            def make_transport(self, tmp_path):
                names = iter(range(1000))
                def make(url=None, **options):
                    return open_transport(url or f"my://{tmp_path}/{next(names)}", **options)
                return make

    ``frame_limit`` (class attribute) is the ``max_frame_size`` the frame-size tests
    run with; lower it if the transport's medium carries less (NATS: 1 MB by default).
    ``stalled_peers`` (a fixture, True by default) says whether a peer that stops
    reading holds its senders back: the suite then starts one transport on an event
    loop of its own, in a thread, blocks that loop in ``on_frame``, and expects the
    sender's queue to fill before 50 MiB were accepted. Override it to return False
    for a transport whose medium buffers for a stalled peer (memory, a broker): that
    test skips, and the burst tests bound the queue. ``make_transport`` is then also
    called in that thread (the transport is started on that thread's loop).

    The tests use ``nodes`` (``TransportNodes``: ``await nodes.start(url=None,
    **options)`` makes, starts and at the end closes a transport, and returns a
    ``TransportNode`` recording what its callbacks got).

    What the tests take from the contract (``kerna.transports._base``), besides what
    it states: ``send(..., wait=False)`` to a connected peer does not yield to the event
    loop (the tests fill a queue with a burst of such sends: frames cannot drain in
    between); ``address`` stays readable after ``aclose`` (the tests restart on it);
    closing a transport closes its own tasks, every task it started is
    finished when ``aclose`` returns.

    The tests are async: they run through anyio's pytest plugin on asyncio and need
    pytest (``pip install 'kerna[test]'``). Every wait in them is bounded.
    """

    frame_limit: ClassVar[int] = 512 * 1024

    @pytest.fixture
    async def nodes(self, make_transport: TransportFactory) -> AsyncIterator[TransportNodes]:
        """Starts transports (``await nodes.start(url=None, **options)``), closed at the
        end of the test."""
        started = TransportNodes(make_transport)
        try:
            yield started
        finally:
            await started.aclose()

    async def test_frames_arrive_in_order_with_the_senders_address(
        self, nodes: TransportNodes
    ) -> None:
        a, b = await nodes.start(), await nodes.start()
        sent = [b"frame-%d" % i for i in range(200)]
        for frame in sent:
            await a.transport.send(b.address, frame)
        assert await b.receive(a.address, len(sent)) == sent
        assert {peer for peer, _ in b.frames} == {a.address}
        # the address on_frame gave is where a reply goes
        await b.transport.send(b.frames[0][0], b"reply")
        assert await a.receive(b.address, 1) == [b"reply"]

    async def test_send_now_keeps_the_order_of_send_and_never_overfills(
        self, nodes: TransportNodes
    ) -> None:
        a = await nodes.start(send_queue=4)
        b = await nodes.start()
        await a.transport.send(b.address, b"first")  # connects, if the medium needs it
        sent = [b"first"]
        for i in range(20):  # never awaited: at most the queue's room is taken now
            frame = b"now-%d" % i
            if a.transport.send_now(b.address, frame):
                sent.append(frame)
        assert len(sent) <= 1 + 4
        await a.transport.send(b.address, b"last")
        sent.append(b"last")
        assert await b.receive(a.address, len(sent)) == sent
        with pytest.raises(FrameTooLarge):
            a.transport.send_now(b.address, b"x" * (a.transport.max_frame_size + 1))

    async def test_frame_boundaries_hold_from_empty_up_to_the_limit(
        self, nodes: TransportNodes
    ) -> None:
        limit = self.frame_limit
        a = await nodes.start(max_frame_size=limit)
        b = await nodes.start(max_frame_size=limit)
        pattern = bytes(range(256)) * (limit // 256 + 2)
        sizes = [0, 1, 2, 3, 4, 5, 7, 8, 9, 255, 256, 257, 65535, 65536, 65537, 0]
        sizes += [limit - 1, limit, 0, 1]
        sent = [pattern[i % 7 : i % 7 + size] for i, size in enumerate(sizes)]
        for frame in sent:
            await a.transport.send(b.address, frame)
        got = await b.receive(a.address, len(sent))
        assert [len(f) for f in got] == sizes
        assert got == sent
        assert all(type(f) is bytes for _, f in b.frames)

    async def test_a_frame_over_the_limit_is_refused_by_its_sender(
        self, nodes: TransportNodes
    ) -> None:
        a = await nodes.start(max_frame_size=1000)
        b = await nodes.start()
        with pytest.raises(FrameTooLarge, match="1001 bytes"):
            await a.transport.send(b.address, b"x" * 1001)
        with pytest.raises(FrameTooLarge):
            await a.transport.send(b.address, b"x" * 1001, wait=False)
        await a.transport.send(b.address, b"x" * 1000)
        assert await b.receive(a.address, 1) == [b"x" * 1000]

    async def test_a_frame_over_the_receivers_limit_is_dropped_and_its_sender_lost(
        self, nodes: TransportNodes
    ) -> None:
        a = await nodes.start(max_frame_size=4096)
        b = await nodes.start(max_frame_size=1024)
        c = await nodes.start()
        await _connect(a, b)
        await a.transport.send(b.address, b"y" * 1025)
        await b.until(lambda: a.address in b.lost_peers(), f"on_peer_lost({a.address!r})")
        await c.transport.send(b.address, b"b still receives")
        assert await b.receive(c.address, 1) == [b"b still receives"]
        assert b.frames_from(a.address) == [b"hello"]

    async def test_a_malformed_peer_address_is_unreachable(self, nodes: TransportNodes) -> None:
        a = await nodes.start()
        bad = ["", "no scheme", "zz-other-scheme://x", f"{a.transport.scheme}:/"]
        for peer in bad:
            with pytest.raises(PeerUnreachable):
                await a.transport.send(peer, b"lost")
        b = await nodes.start()
        await _connect(a, b)  # a still works

    async def test_an_address_nothing_listens_on_is_unreachable(
        self, nodes: TransportNodes
    ) -> None:
        a, gone = await nodes.start(), await nodes.start()
        await gone.transport.aclose()  # a never talked to it: nothing to report lost
        with pytest.raises(PeerUnreachable):
            await a.transport.send(gone.address, b"to no one")
        b = await nodes.start()
        await _connect(a, b)  # a still works
        assert a.lost_peers() == []

    async def test_a_full_send_queue_fails_a_sender_that_will_not_wait(
        self, nodes: TransportNodes
    ) -> None:
        a = await nodes.start(send_queue=4)
        b = await nodes.start()
        await _connect(a, b)
        taken = await _fill(a, b, 4)
        assert 1 <= len(taken) <= 4, "a queue of 4 took more than 4 frames"
        assert await b.receive(a.address, 1 + len(taken)) == [b"hello", *taken]

    async def test_a_sender_that_waits_on_a_full_queue_goes_on_when_it_drains(
        self, nodes: TransportNodes
    ) -> None:
        a = await nodes.start(send_queue=2)
        b = await nodes.start()
        await _connect(a, b)
        taken = await _fill(a, b, 2)
        burst = [b"wait-%d" % i for i in range(50)]
        async with asyncio.timeout(WAIT):
            for frame in burst:
                await a.transport.send(b.address, frame, wait=True)
        assert await b.receive(a.address, 1 + len(taken) + len(burst)) == [
            b"hello",
            *taken,
            *burst,
        ]

    async def test_a_paused_peer_sends_nothing_more_until_the_receiver_resumes(
        self, nodes: TransportNodes
    ) -> None:
        a, b, c = await nodes.start(), await nodes.start(), await nodes.start()
        if not type(b.transport).pauses:
            pytest.skip("this transport does not pause one peer (Transport.pauses)")
        await _connect(a, b)
        await _connect(c, b)
        before = len(b.frames_from(a.address))
        b.gate = asyncio.get_running_loop().create_future()
        b.pause_on = b"pause"
        for frame in (b"pause", b"one", b"two"):
            await a.transport.send(b.address, frame)
        await b.receive(a.address, before + 1)
        # Another peer is not held back; and ``a``'s frames, sent first, stayed back.
        for i in range(20):
            await c.transport.send(b.address, b"other-%d" % i)
        await b.receive(c.address, 21)
        assert b.frames_from(a.address)[before:] == [b"pause"]
        b.gate.set_result(None)
        assert (await b.receive(a.address, before + 3))[before:] == [b"pause", b"one", b"two"]

    @pytest.fixture
    def stalled_peers(self) -> bool:
        """Whether a peer that stops reading holds its senders back (True by default:
        a transport that streams to its peers directly). A transport whose medium
        buffers for a stalled peer (memory, a broker) overrides this to return False:
        the test of it then skips, and the burst tests above are its bound."""
        return True

    async def test_a_peer_that_reads_nothing_fills_its_senders_queue(
        self, nodes: TransportNodes, make_transport: TransportFactory, stalled_peers: bool
    ) -> None:
        if not stalled_peers:
            pytest.skip("this transport's medium buffers for a stalled peer")
        a = await nodes.start(send_queue=4, max_frame_size=1 << 20)
        peer = _StalledPeer(make_transport)
        address = await peer.start()
        filler = bytes(128 * 1024)
        accepted = 0
        try:
            # At most 400 frames of 128 KiB (50 MiB, well over what sockets buffer) to a
            # peer that reads nothing: a bounded transport is full long before.
            while accepted < 400:
                try:
                    await a.transport.send(address, b"%08d" % accepted + filler, wait=False)
                except SendQueueFull:
                    for _ in range(50):  # a writer that only lags catches up meanwhile
                        await asyncio.sleep(0)
                    try:
                        await a.transport.send(address, b"%08d" % accepted + filler, wait=False)
                    except SendQueueFull:
                        break
                accepted += 1
                for _ in range(5):  # let the sender's own tasks write what the socket takes
                    await asyncio.sleep(0)
            else:
                raise AssertionError(
                    f"{accepted} frames (50 MiB) queued for a peer that reads nothing"
                )
            peer.release()
            assert await peer.receive(accepted) == [b"%08d" % i for i in range(accepted)]
        finally:
            await peer.aclose()

    async def test_concurrent_senders_lose_nothing_and_keep_their_order(
        self, nodes: TransportNodes
    ) -> None:
        b = await nodes.start()
        senders = [await nodes.start(send_queue=4) for _ in range(3)]
        tasks_per_sender, frames_per_task = 4, 60

        async def send_all(node: TransportNode, task: int) -> None:
            for i in range(frames_per_task):
                await node.transport.send(b.address, b"%d:%d" % (task, i))

        async with asyncio.timeout(WAIT), asyncio.TaskGroup() as group:
            for node in senders:
                for task in range(tasks_per_sender):
                    group.create_task(send_all(node, task))
        for node in senders:
            got = await b.receive(node.address, tasks_per_sender * frames_per_task)
            for task in range(tasks_per_sender):
                mine = [f for f in got if f.startswith(b"%d:" % task)]
                assert mine == [b"%d:%d" % (task, i) for i in range(frames_per_task)]

    async def test_a_failing_callback_does_not_kill_the_transport(
        self, nodes: TransportNodes
    ) -> None:
        a, b = await nodes.start(), await nodes.start()
        b.raise_on = b"boom"
        for frame in (b"one", b"boom", b"two"):
            await a.transport.send(b.address, frame)
        assert await b.receive(a.address, 3) == [b"one", b"boom", b"two"]
        await b.transport.send(a.address, b"b still sends")
        assert await a.receive(b.address, 1) == [b"b still sends"]

    async def test_a_peer_that_closes_is_reported_lost(self, nodes: TransportNodes) -> None:
        a, b = await nodes.start(), await nodes.start()
        await _connect(a, b)
        await b.transport.aclose()
        await a.until(lambda: b.address in a.lost_peers(), f"on_peer_lost({b.address!r})")
        assert a.lost_peers().count(b.address) == 1

    async def test_a_peer_restarted_on_its_address_is_reachable_again(
        self, nodes: TransportNodes
    ) -> None:
        a, b = await nodes.start(), await nodes.start()
        await _connect(a, b)
        await b.transport.aclose()
        await a.until(lambda: b.address in a.lost_peers(), f"on_peer_lost({b.address!r})")
        b2 = await nodes.start(b.address)
        assert b2.address == b.address
        await a.transport.send(b2.address, b"again")
        assert await b2.receive(a.address, 1) == [b"again"]
        await b2.transport.send(a.address, b"back")
        assert await a.receive(b2.address, 1) == [b"back"]

    async def test_an_address_in_use_cannot_be_started_on(self, nodes: TransportNodes) -> None:
        from kerna import ConfigError

        a = await nodes.start()
        with pytest.raises(ConfigError):
            await nodes.start(a.address)
        with pytest.raises(RuntimeError):
            await a.transport.start(a.on_frame, a.on_peer_lost)

    async def test_closing_with_frames_in_flight_fails_waiting_senders_and_leaves_no_task(
        self, nodes: TransportNodes
    ) -> None:
        before = asyncio.all_tasks()
        a = await nodes.start(send_queue=2)
        b = await nodes.start()
        await _connect(a, b)
        await _fill(a, b, 2)
        waiting = [
            asyncio.create_task(a.transport.send(b.address, b"late-%d" % i)) for i in range(100)
        ]
        # once b has the first of them, they have all run: most of them wait for room
        await b.until(lambda: b"late-0" in b.frames_from(a.address), "frame late-0")
        async with asyncio.timeout(WAIT):
            await a.transport.aclose()
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(o is None or isinstance(o, TransportClosed) for o in outcomes), outcomes
        assert any(isinstance(o, TransportClosed) for o in outcomes), "no sender was failed"
        for wait in (True, False):
            with pytest.raises(TransportClosed):
                await a.transport.send(b.address, b"after close", wait=wait)
        await a.transport.aclose()  # idempotent
        await b.transport.aclose()
        left = [t for t in asyncio.all_tasks() - before if not t.done()]
        left = [t for t in left if t is not asyncio.current_task()]
        assert not left, f"tasks left running after aclose: {left}"
