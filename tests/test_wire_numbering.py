"""The numbering of deliveries between nodes: on the wire (``epoch``, ``seq``: trailing
fields with defaults) it round-trips, a frame from an older peer (without them) decodes
as not numbered (0, 0) and a newer frame decodes on an older peer's layout; and how the
receiver counts gaps and out-of-order numbers."""

from __future__ import annotations

import msgspec

from kerna import AgentId
from kerna._delivery_order import MAX_PEERS, DeliveryOrder, DeliveryStats
from kerna._envelope import TELL, Envelope
from kerna._wire import Delivery, MessageTypes, WireCodec

from .wire_messages import ALL, Ping

PEER = "tcp://10.0.0.7:4000"
EPOCH = (1 << 63) - 1  # the largest epoch a Remote draws


def _codec() -> WireCodec:
    types = MessageTypes()
    types.add_all(ALL)
    return WireCodec(types)


def _tell() -> Envelope:
    return Envelope(7, TELL, AgentId("Echo", "a"), Ping(n=1, note="x"), None)


def test_a_delivery_carries_the_senders_epoch_and_number() -> None:
    codec = _codec()
    got = codec.decode(codec.encode(_tell(), epoch=EPOCH, seq=12345), PEER)
    assert isinstance(got, Delivery)
    assert (got.epoch, got.seq) == (EPOCH, 12345)
    assert got.message == Ping(n=1, note="x")


def test_a_frame_from_an_older_peer_decodes_as_not_numbered() -> None:
    codec = _codec()
    frame = codec.encode(_tell())  # no numbering: what an older node sends
    assert frame == codec.encode(_tell(), epoch=0, seq=0)  # nothing trailing is written
    got = codec.decode(frame, PEER)
    assert isinstance(got, Delivery)
    assert (got.epoch, got.seq) == (0, 0)


class _OlderDelivery(msgspec.Struct, array_like=True, tag=1):
    # the delivery layout before numbering (an older peer decodes with it)
    id: int
    kind: int
    tag: str
    target: str
    key: str | None
    payload: msgspec.Raw
    sender: tuple[str, str] | None = None
    correlation_id: int = 0
    causation_id: int = 0
    remaining: float | None = None
    chain: tuple[tuple[str, str], ...] = ()
    headers: dict[str, str] | None = None
    reply_to: str | None = None


def test_a_numbered_frame_decodes_on_an_older_peers_layout() -> None:
    frame = _codec().encode(_tell(), epoch=EPOCH, seq=3)
    older = msgspec.msgpack.decode(frame, type=_OlderDelivery)  # extra trailing: ignored
    assert (older.id, older.tag, older.target, older.key) == (7, "test.Ping", "Echo", "a")


def test_the_receiver_counts_gaps_and_out_of_order_numbers_per_peer_and_epoch() -> None:
    order = DeliveryOrder()
    order.unexpected(PEER, 5, 40)  # the first number seen sets the baseline
    assert order.stats() == DeliveryStats()
    order.last[PEER][1] = 41  # what Remote does for the next one (41)
    order.unexpected(PEER, 5, 45)  # 42, 43, 44 lost
    order.unexpected(PEER, 5, 45)  # a duplicate: counted (and delivered)
    order.unexpected(PEER, 5, 30)  # a reordering
    assert order.stats() == DeliveryStats(3, 2, {PEER: (3, 2)})
    order.unexpected(PEER, 6, 900)  # a restarted sender: a new baseline, no gap
    order.unexpected(PEER, 6, 902)
    assert order.stats() == DeliveryStats(4, 2, {PEER: (4, 2)})


def test_the_receiver_keeps_at_most_max_peers_entries() -> None:
    order = DeliveryOrder()
    for i in range(MAX_PEERS + 5):
        order.unexpected(f"tcp://10.0.0.1:{i}", 1, 7)
    assert len(order.last) == MAX_PEERS
    assert "tcp://10.0.0.1:0" not in order.last  # the oldest forgotten first
