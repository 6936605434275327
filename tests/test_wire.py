"""The wire encoding (kerna._wire): what a delivery and a reply carry across nodes, and
how a hostile or foreign frame is refused: a WireError naming the reason, tag and peer,
counted per reason, and never another exception or a default-filled message."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from kerna import AgentId, KernelStopped, Message, RemoteError
from kerna._envelope import ASK, EVENT, TELL, Envelope
from kerna._wire import (
    DEFAULT_MAX_DEPTH,
    Delivery,
    MessageTypes,
    Reply,
    WireCodec,
    WireError,
    WireErrorReason,
)

from .wire_messages import ALL, Count, Lookup, Ping, Point, Pong, Shape, Tree

PEER = "tcp://10.0.0.7:4000"


def _codec(**options: Any) -> WireCodec:
    types = MessageTypes()
    types.add_all(ALL)
    return WireCodec(types, **options)


def _ask(payload: Message, *, deadline: float | None = 12.5) -> Envelope:
    caller = AgentId("Caller", "c1")
    return Envelope(
        41, ASK, AgentId("Echo", "a"), payload, caller, 40, 39, deadline,
        (AgentId("Root", "r"), caller), None, {"trace": "t-1"},
    )  # fmt: skip


def _refused(codec: WireCodec, frame: bytes) -> WireError:
    with pytest.raises(WireError) as info:
        codec.decode(frame, PEER)
    assert PEER in str(info.value)
    return info.value


def test_a_delivery_carries_every_envelope_field_and_the_remaining_time() -> None:
    codec = _codec()
    frame = codec.encode(_ask(Ping(n=3, note="hi")), "tcp://asker:1", now=10.0)
    got = codec.decode(frame, PEER)
    assert isinstance(got, Delivery)
    assert (got.id, got.kind, got.tag) == (41, ASK, "test.Ping")
    assert got.target == AgentId("Echo", "a")
    assert got.message == Ping(n=3, note="hi")
    assert got.sender == AgentId("Caller", "c1")
    assert (got.correlation_id, got.causation_id) == (40, 39)
    assert got.remaining == 2.5  # 12.5 - 10.0: the receiver's clock is another
    assert got.chain == (AgentId("Root", "r"), AgentId("Caller", "c1"))
    assert got.headers == {"trace": "t-1"}
    assert got.reply_to == "tcp://asker:1"
    env = got.envelope(now=1000.0)
    assert env.deadline == 1002.5
    assert (env.payload, env.reply, env.target) == (got.message, None, got.target)


def test_a_tell_and_an_event_carry_no_reply_to_and_no_deadline() -> None:
    codec = _codec()
    tell = Envelope(7, TELL, AgentId("A", "k"), Pong(n=1), None, 7)
    event = Envelope(8, EVENT, "prices", Point(x=1.0, y=2.0), None, 8)
    got_tell = codec.decode(codec.encode(tell, "tcp://x:1"), PEER)
    got_event = codec.decode(codec.encode(event), PEER)
    assert isinstance(got_tell, Delivery)
    assert isinstance(got_event, Delivery)
    assert (got_tell.reply_to, got_tell.remaining, got_tell.sender) == (None, None, None)
    assert got_event.target == "prices"
    assert got_event.message == Point(x=1.0, y=2.0)


def test_encode_into_writes_after_an_offset_in_a_reused_buffer() -> None:
    codec = _codec()
    buffer = bytearray(b"\x00\x00\x00\x00stale bytes from the last frame" * 4)
    codec.encode_into(_ask(Pong(n=5)), buffer, "tcp://me:1", offset=4, now=0.0)
    got = codec.decode(bytes(buffer[4:]), PEER)
    assert isinstance(got, Delivery)
    assert got.message == Pong(n=5)
    assert buffer[:4] == b"\x00\x00\x00\x00"


def test_replies_decode_as_the_message_by_tag_or_as_the_declared_reply_type() -> None:
    codec = _codec()
    cases: list[tuple[Any, Any, Any]] = [
        (Ping, Pong(n=2), Pong(n=2)),
        (Lookup, [Pong(n=1), Pong(n=2)], [Pong(n=1), Pong(n=2)]),  # Request[list[Pong]]
        (Count, 7, 7),
        (Pong, {"a": (1, 2)}, {"a": [1, 2]}),  # undeclared: msgpack's natural types
        ("unknown.Request", None, None),
    ]
    for request, value, expected in cases:
        got = codec.decode(codec.encode_reply(41, request, value), PEER)
        assert got == Reply(41, expected), request
    failed = codec.decode(codec.encode_error(41, ValueError("boom")), PEER)
    assert isinstance(failed, Reply)
    assert isinstance(failed.error, RemoteError)
    assert (failed.error.type_name, failed.error.message) == ("ValueError", "boom")
    stopped = codec.decode(codec.encode_error(42, KernelStopped("bye")), PEER)
    assert isinstance(stopped, Reply)
    assert isinstance(stopped.error, RemoteError)
    assert stopped.error.type_name == "kerna.KernelStopped"  # the public name, as in-process
    with pytest.raises(RemoteError, match="boom"):
        failed.result()
    remote = RemoteError("app.Oops", "no", "Traceback ...")
    again = codec.decode(codec.encode_error(41, remote), PEER)
    assert isinstance(again, Reply)
    assert again.error is not None
    assert (again.error.type_name, again.error.traceback) == ("app.Oops", "Traceback ...")


def test_a_reply_that_does_not_match_the_declared_type_is_refused() -> None:
    codec = _codec()
    error = _refused(codec, codec.encode_reply(41, Count, "seven"))
    assert error.reason is WireErrorReason.BAD_PAYLOAD
    assert "int" in str(error)


def test_an_unencodable_value_or_payload_is_a_wire_error_naming_it() -> None:
    codec = _codec()
    with pytest.raises(WireError, match="unencodable") as info:
        codec.encode_reply(41, Ping, object())
    assert info.value.reason is WireErrorReason.UNENCODABLE
    with pytest.raises(WireError, match="not a kerna.Message"):
        codec.encode(_ask({"not": "a message"}))  # type: ignore[arg-type]


def test_a_frame_over_the_limit_is_refused_both_ways() -> None:
    codec = _codec(max_frame_size=200)
    with pytest.raises(WireError, match="over the limit of 200") as info:
        codec.encode(_ask(Ping(n=1, note="x" * 300)), now=0.0)
    assert info.value.reason is WireErrorReason.TOO_LARGE
    assert info.value.tag == "test.Ping"
    big = _codec().encode(_ask(Ping(n=1, note="x" * 300)), now=0.0)
    assert _refused(codec, big).reason is WireErrorReason.TOO_LARGE
    assert codec.decode(codec.encode(_ask(Ping(n=1)), now=0.0), PEER)  # the buffer recovered


def test_unknown_tag_names_the_tag_and_keeps_the_asker_for_an_error_reply() -> None:
    sender = _codec()
    receiver = WireCodec()  # knows no types
    error = _refused(receiver, sender.encode(_ask(Ping(n=1)), "tcp://asker:1", now=0.0))
    assert error.reason is WireErrorReason.UNKNOWN_TAG
    assert error.tag == "test.Ping"
    assert "'test.Ping'" in str(error)
    assert (error.message_id, error.reply_to) == (41, "tcp://asker:1")
    assert receiver.errors == {WireErrorReason.UNKNOWN_TAG: 1}


def test_a_refused_ask_answered_with_an_error_reply_tells_the_asker_why() -> None:
    sender = _codec()
    receiver = WireCodec()
    refused = _refused(receiver, sender.encode(_ask(Ping(n=1)), "tcp://asker:1", now=0.0))
    assert refused.reply_to == "tcp://asker:1"
    answer = sender.decode(receiver.encode_error(refused.message_id, refused), "tcp://b:2")
    assert isinstance(answer, Reply)
    assert answer.id == 41
    assert answer.error is not None
    assert answer.error.type_name == "kerna._wire.WireError"
    assert "unknown_tag" in answer.error.message
    assert "'test.Ping'" in answer.error.message


def _frame_with_payload(codec: WireCodec, tag: str, payload: Any, kind: int = TELL) -> bytes:
    frame = msgspec.msgpack.decode(codec.encode(_ask(Pong(n=0)), "tcp://asker:1", now=0.0))
    frame[2], frame[3] = kind, tag  # [frame tag, id, kind, tag, target, key, payload, ...]
    frame[6] = payload
    return msgspec.msgpack.encode(frame)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({"type": "test.Pong"}, "missing required field `n`"),
        ({"type": "test.Pong", "n": "1"}, "Expected `int`, got `str`"),
        ({"type": "test.Point", "n": 1}, "Invalid value 'test.Point'"),  # another tag
        (5, "Expected `object`, got `int`"),
        (None, "Expected `object`, got `None`"),
    ],
)
def test_a_payload_that_does_not_match_its_type_is_never_a_default_object(
    payload: Any, why: str
) -> None:
    codec = _codec()
    error = _refused(codec, _frame_with_payload(codec, "test.Pong", payload))
    assert error.reason is WireErrorReason.BAD_PAYLOAD
    assert error.tag == "test.Pong"
    assert why in str(error)


def test_unknown_fields_from_a_newer_peer_are_ignored_and_missing_defaults_filled() -> None:
    codec = _codec()
    newer = {"type": "test.Ping", "n": 1, "added_later": [1, 2]}  # `note` missing
    got = codec.decode(_frame_with_payload(codec, "test.Ping", newer, ASK), PEER)
    assert isinstance(got, Delivery)
    assert got.message == Ping(n=1, note="")
    frame = msgspec.msgpack.decode(codec.encode(_ask(Pong(n=4)), "tcp://a:1", now=0.0))
    frame.append({"a future envelope field": True})
    got = codec.decode(msgspec.msgpack.encode(frame), PEER)
    assert isinstance(got, Delivery)
    assert got.message == Pong(n=4)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",  # a delivery that is too short
        b"\x91\x09",  # an unknown frame tag
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
        b"\xdb\xff\xff\xff\xff",  # a str claiming 4 GiB
        msgspec.msgpack.encode({"not": "an array"}),
        msgspec.msgpack.encode([1, 1, 5, "test.Pong", "A", "k", {"n": 1}]),  # kind 5
        msgspec.msgpack.encode([1, -3, 0, "test.Pong", "A", "k", {"n": 1}]),  # negative id
        msgspec.msgpack.encode([1, 1, 0, "test.Pong", "A", None, {"n": 1}]),  # tell, no key
        msgspec.msgpack.encode([1, 1, 2, "test.Pong", "t", "k", {"n": 1}]),  # keyed event
        msgspec.msgpack.encode([1, 1, 0, "test.Pong", "A", "k", {"n": 1}, None, 0, 0, 1e300]),
    ],
)
def test_a_frame_that_does_not_decode_is_malformed(frame: bytes) -> None:
    assert _refused(_codec(), frame).reason is WireErrorReason.MALFORMED


def test_a_frame_with_nan_remaining_time_is_refused() -> None:
    codec = _codec()
    frame = msgspec.msgpack.decode(codec.encode(_ask(Pong(n=1)), now=0.0))
    frame[10] = float("nan")
    assert _refused(codec, msgspec.msgpack.encode(frame)).reason is WireErrorReason.MALFORMED


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_is_capped_before_decoding_and_the_cap_is_exact() -> None:
    codec = _codec()
    # a Tree message is depth 1, and each list in its children one more
    ok = Envelope(1, TELL, AgentId("A", "k"), Tree(children=_nested(DEFAULT_MAX_DEPTH - 1)))
    assert isinstance(codec.decode(codec.encode(ok), PEER), Delivery)
    deep = Envelope(1, TELL, AgentId("A", "k"), Tree(children=_nested(DEFAULT_MAX_DEPTH)))
    error = _refused(codec, codec.encode(deep))
    assert error.reason is WireErrorReason.TOO_DEEP
    # far beyond Python's recursion limit: still a WireError, not a RecursionError
    hostile = b"\x92\x01" + b"\x91" * 100_000 + b"\xc0"
    assert _refused(codec, hostile).reason is WireErrorReason.TOO_DEEP
    shallow = _codec(max_depth=4)
    shape = Envelope(1, TELL, AgentId("A", "k"), Shape("s", [Point(1, 2)], {"a": [[[1]]]}))
    assert _refused(shallow, shallow.encode(shape)).reason is WireErrorReason.TOO_DEEP


def test_every_refusal_is_counted_by_reason() -> None:
    codec = _codec(max_frame_size=64)
    for frame in (b"\xc1", b"\xc1", b"\x91" * 70, b"\x91" * 40 + b"\xc0"):
        with pytest.raises(WireError):
            codec.decode(frame, PEER)
    assert codec.errors == {WireErrorReason.MALFORMED: 2, WireErrorReason.TOO_LARGE: 1,
                            WireErrorReason.TOO_DEEP: 1}  # fmt: skip


def test_a_tag_taken_by_two_classes_is_a_registration_error() -> None:
    from kerna import RegistrationError

    class Impostor(Message, tag="test.Pong"):
        n: int

    types = MessageTypes()
    types.add(Pong)
    with pytest.raises(RegistrationError, match="'test.Pong' is used by both"):
        types.add(Impostor)
    with pytest.raises(RegistrationError, match="not a kerna.Message"):
        types.add(int)  # type: ignore[arg-type]
