"""Delivery between nodes is at most once, and what is lost is counted: two kernels
over tcp through a FaultProxy, a steady stream of numbered tells from A to one agent on
B, the link reset mid-stream and healed. The agent sees strictly increasing numbers
(no duplicate, no reordering), and B's ``delivery_stats().gaps`` is exactly how many
tells A sent (without an error) that B's agent never saw."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import generate_latest

from kerna import Kernel
from kerna.node._metrics import KernelCollector, node_registry
from kerna.testing import FaultProxy
from kerna.transports import PeerUnreachable

from .numbered_tells import OPTIONS, SEEN, Recorder, tell_through_resets

pytestmark = pytest.mark.anyio

TCP = "tcp://127.0.0.1:0"


@pytest.mark.parametrize("send_queue", [None, 4], ids=["default-queue", "tiny-queue"])
async def test_a_reset_link_loses_tells_but_never_repeats_them_and_b_counts_each_lost_one(
    send_queue: int | None,
) -> None:
    """With a send queue of 4 frames most tells wait for room (A's backlog for B):
    those are numbered and counted when lost too."""
    sender_options = dict(OPTIONS) if send_queue is None else {**OPTIONS, "send_queue": send_queue}
    async with (
        Kernel(transport=TCP, transport_options=sender_options, stop_grace=0.1) as a,
        Kernel(transport=TCP, transport_options=OPTIONS, stop_grace=0.1) as b,
    ):
        b.register(Recorder)
        assert b.address is not None
        async with FaultProxy(b.address.removeprefix("tcp://")) as proxy:
            ref = a.ref(Recorder, "r", node=f"tcp://{proxy.endpoint}")
            sent, failed, _ = await tell_through_resets(ref, proxy, (PeerUnreachable,))
        stats = b.delivery_stats()
        registry = node_registry(KernelCollector(b, "b", "test", lambda: 0.0))
        exported = generate_latest(registry).decode().splitlines()
    assert all(x < y for x, y in itertools.pairwise(SEEN)), "a duplicate or reordering"
    missing = set(range(1, sent + 1)) - failed - set(SEEN)
    assert missing, "no tell was lost: the resets did not cut the stream mid-flight"
    assert stats.gaps == len(missing), (stats, sorted(missing))
    assert stats.out_of_order == 0
    assert stats.peers == {a.address: (len(missing), 0)}
    assert f"kerna_delivery_gaps_total {float(len(missing))}" in exported
    assert "kerna_delivery_out_of_order_total 0.0" in exported
    assert "kerna_handoff_unordered_total 0.0" in exported
