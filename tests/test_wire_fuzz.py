"""Hostile input for the wire decoder: generated and mutated frames (deliveries, replies,
batches) give a WireError or a decoded frame, nothing else, each in bounded time. The
suite runs a slice; the million-frame run is ``python -m tests.fuzz_wire --frames
1000000`` (tests/fuzz_wire.py)."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kerna import AgentId
from kerna._envelope import ASK, EVENT, TELL, Envelope
from kerna._wire import Batch, Delivery, WireError

from . import fuzz_wire
from .wire_messages import Ping, Point, Shape

_WIRE = fuzz_wire.codec()

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
_tags = st.sampled_from(["test.Pong", "test.Ping", "test.Shape", "test.Tree", "nope", ""])


@st.composite
def _batches(draw: st.DrawFn) -> bytes:
    """Batch-shaped arrays (tag 4): a routing, then items [id, payload, ids, remaining]
    that are plausible or random."""
    tag = draw(_tags)
    head: list[Any] = [4, draw(st.integers(-1, 3)), tag, draw(st.text(max_size=4))]
    head.append(draw(st.none() | st.text(max_size=4)))
    items: list[Any] = []
    for _ in range(draw(st.integers(0, 6))):
        payload = draw(_values)
        if isinstance(payload, dict) and draw(st.booleans()):
            payload["type"] = tag
        item: list[Any] = [draw(st.integers(-2, 2**63)), payload]
        item += draw(st.lists(st.integers(-1, 2**63) | st.floats() | _values, max_size=4))
        items.append(item if draw(st.integers(0, 9)) else draw(_values))
    head.append(items)
    head += draw(st.lists(_values, max_size=7))
    return msgspec.msgpack.encode(head)


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    """Frame-shaped arrays: a frame tag, then fields that are plausible or random."""
    if draw(st.integers(0, 3)) == 0:
        return draw(_batches())
    head: list[Any] = [draw(st.sampled_from([1, 2, 3, 0, 7])), draw(st.integers(-2, 2**63))]
    head += [draw(st.integers(-1, 3)), draw(_tags), draw(st.text(max_size=4))]
    head += [draw(st.none() | st.text(max_size=4))]
    payload = draw(_values)
    if isinstance(payload, dict) and draw(st.booleans()):
        payload["type"] = head[3]
    head.append(payload)
    head += draw(st.lists(_values, max_size=8))
    return msgspec.msgpack.encode(head)


def _decodes_or_refuses(frame: bytes) -> None:
    try:
        _WIRE.decode(frame, "fuzz://peer")
    except WireError:
        pass


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames())
def test_generated_frames_decode_or_are_refused_with_a_wire_error(frame: bytes) -> None:
    _decodes_or_refuses(frame)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_are_refused_with_a_wire_error(frame: bytes) -> None:
    _decodes_or_refuses(frame)


_ids = st.integers(min_value=0, max_value=2**63 - 1)
_agents = st.builds(AgentId, st.text(max_size=5), st.text(max_size=5))
_messages = st.one_of(
    st.builds(Ping, st.integers(-(2**63), 2**63 - 1), st.text(max_size=10)),
    st.builds(
        Shape,
        st.text(max_size=5),
        st.lists(st.builds(Point, st.floats(allow_nan=False), st.floats(allow_nan=False))),
        st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1), max_size=3),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    _ids, st.sampled_from([TELL, ASK, EVENT]), _agents, _messages, st.none() | _agents, _ids,
    _ids, st.none() | st.floats(-1e6, 1e6), st.lists(_agents, max_size=3).map(tuple),
    st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
)  # fmt: skip
def test_any_envelope_crosses_the_wire_unchanged(
    msg_id: int, kind: int, agent: AgentId, message: Any, sender: AgentId | None,
    correlation: int, causation: int, remaining: float | None, chain: tuple[AgentId, ...],
    headers: dict[str, str] | None,
) -> None:  # fmt: skip
    target: AgentId | str = agent.type if kind == EVENT else agent
    env = Envelope(
        msg_id, kind, target, message, sender, correlation, causation, remaining, chain,
        None, headers,
    )  # fmt: skip
    got = _WIRE.decode(_WIRE.encode(env, "tcp://a:1", now=0.0), "peer")
    assert isinstance(got, Delivery)
    assert got.envelope(now=0.0) == env
    assert got.reply_to == ("tcp://a:1" if kind == ASK else None)


def test_forty_thousand_mutated_frames_give_no_crash_and_no_hang() -> None:
    result = fuzz_wire.run(40_000, seed=8)
    assert result.crashes == []
    assert result.hangs == []
    assert result.frames == 40_000
    # the run reaches every stage of the decoder, not only the first byte
    assert result.decoded > 1000
    assert result.batches > 500  # batch frames (their items decoded or refused alone)
    assert result.batch_items > result.batches
    assert {"malformed", "bad_payload", "unknown_tag", "too_deep"} <= set(result.refused)


_CLOCKED = fuzz_wire.codec()
_CLOCKED.clock = lambda: 100.0  # deadlines rebuilt at a known time


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([TELL, ASK, EVENT]), _agents, st.none() | _agents,
    st.lists(_agents, max_size=3).map(tuple),
    st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
    st.lists(
        st.tuples(_ids, _messages, _ids, _ids, st.none() | st.floats(-1e6, 1e6)),
        min_size=1, max_size=8,
    ),
    st.integers(0, 2**40),
)  # fmt: skip
def test_any_batch_crosses_the_wire_as_its_envelopes(
    kind: int, agent: AgentId, sender: AgentId | None, chain: tuple[AgentId, ...],
    headers: dict[str, str] | None, items: list[tuple[int, Any, int, int, float | None]],
    seq: int,
) -> None:  # fmt: skip
    target: AgentId | str = agent.type if kind == EVENT else agent
    # the routing: the first envelope's; every item's message is of the batch's type
    items = [entry for entry in items if type(entry[1]) is type(items[0][1])]
    first = Envelope(1, kind, target, items[0][1], sender, 1, 0, None, chain, None, headers)
    wire = [
        (mid, _CLOCKED.encode_payload(message), corr, caus, remaining)
        for mid, message, corr, caus, remaining in items
    ]
    got = _CLOCKED.decode(_CLOCKED.encode_batch(first, wire, "tcp://a:1", epoch=3, seq=seq), "p")
    assert isinstance(got, Batch)
    assert got.seq == seq
    assert got.reply_to == ("tcp://a:1" if kind == ASK else None)
    assert got.envelopes == [
        Envelope(
            mid, kind, target, message, sender, corr, caus,
            None if remaining is None else 100.0 + remaining, chain, None, headers,
        )
        for mid, message, corr, caus, remaining in items
    ]  # fmt: skip
