"""kerna's transports pass the conformance suite it ships (``kerna.testing.TransportSuite``).

``make_transport`` is parametrized over ``FACTORIES``: a transport is added with a
function that, given the test's ``request`` (for the fixtures it needs: a server, a
temp dir), returns its factory of unstarted transports for fresh addresses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from kerna.testing import TransportFactory, TransportSuite
from kerna.transports import Transport, open_transport

_names = itertools.count()


def inproc(request: pytest.FixtureRequest) -> TransportFactory:
    def make(url: str | None = None, /, **options: Any) -> Transport:
        return open_transport(url or f"inproc://conformance-{next(_names)}", **options)

    return make


def nats(request: pytest.FixtureRequest) -> TransportFactory:
    """On the session's nats-server (kerna.testing's ``nats_server`` fixture:
    max_payload 8 MiB), node names of the test's own."""
    server = request.getfixturevalue("nats_server")

    def make(url: str | None = None, /, **options: Any) -> Transport:
        options.setdefault("ping_interval", 0.5)
        return open_transport(url or f"{server.url}/conformance-{next(_names)}", **options)

    return make


def tcp(request: pytest.FixtureRequest) -> TransportFactory:
    def make(url: str | None = None, /, **options: Any) -> Transport:
        return open_transport(url or "tcp://127.0.0.1:0", **options)

    return make


FACTORIES: dict[str, Callable[[pytest.FixtureRequest], TransportFactory]] = {
    "inproc": inproc,
    "nats": nats,
    "tcp": tcp,
}
# Transports whose medium buffers for a peer that stops reading (see
# TransportSuite.stalled_peers); inproc: its peers share the sender's event loop; nats:
# the server buffers for (and in the end drops) a slow consumer.
NO_STALL = {"inproc", "nats"}


class TestTransports(TransportSuite):
    @pytest.fixture(params=sorted(FACTORIES))
    def make_transport(self, request: pytest.FixtureRequest) -> TransportFactory:
        return FACTORIES[request.param](request)

    @pytest.fixture
    def stalled_peers(self, request: pytest.FixtureRequest) -> bool:
        return request.node.callspec.params["make_transport"] not in NO_STALL
