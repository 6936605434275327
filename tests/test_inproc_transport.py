"""What inproc:// adds to the shared contract (tests/test_transport_conformance.py runs
that): its URLs, a name picked at start, and one registry per event loop."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points

import pytest

from kerna import ConfigError
from kerna.transports import PeerUnreachable, open_transport
from kerna.transports._inproc import InprocTransport

pytestmark = pytest.mark.anyio


def test_inproc_is_declared_as_a_kerna_transports_entry_point() -> None:
    declared = {ep.name: ep.value for ep in entry_points(group="kerna.transports")}
    assert declared["inproc"] == "kerna.transports._inproc:InprocTransport"
    assert type(open_transport("inproc://x")) is InprocTransport


@pytest.mark.parametrize("url", ["inproc:///a", "inproc://a/b", "inproc://a b", "tcp://x"])
def test_a_malformed_inproc_url_is_a_config_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigError, match="inproc://name"):
        InprocTransport(url)


async def test_inproc_without_a_name_picks_a_fresh_one_at_start() -> None:
    got: list[tuple[str, bytes]] = []
    arrived = asyncio.Event()

    def on_frame(peer: str, frame: bytes) -> None:
        got.append((peer, frame))
        arrived.set()

    a, b = InprocTransport("inproc://"), InprocTransport("inproc://")
    with pytest.raises(RuntimeError, match="not started"):
        a.address  # noqa: B018 - the property raises
    for t in (a, b):
        await t.start(on_frame, lambda p, e: None)
    try:
        assert a.address != b.address
        assert a.address.startswith("inproc://")
        await a.send(b.address, b"hi")
        async with asyncio.timeout(5):
            await arrived.wait()
        assert got == [(a.address, b"hi")]
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_inproc_name_means_nothing_on_another_event_loop() -> None:
    a = InprocTransport("inproc://only-on-the-test-loop")
    await a.start(lambda p, f: None, lambda p, e: None)

    async def elsewhere() -> None:
        b = InprocTransport("inproc://elsewhere")
        await b.start(lambda p, f: None, lambda p, e: None)
        try:
            with pytest.raises(PeerUnreachable, match="only-on-the-test-loop"):
                await b.send("inproc://only-on-the-test-loop", b"x")
        finally:
            await b.aclose()

    try:
        await asyncio.to_thread(asyncio.run, elsewhere())
    finally:
        await a.aclose()
