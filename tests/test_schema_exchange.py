"""What nodes tell each other about their schemas (kerna._schema_exchange): a
compatible difference is logged at INFO and is not a mismatch, an incompatible one is
logged at WARNING with what breaks and is listed; what a peer sends is bounded."""

from __future__ import annotations

import json
import logging
import random
import zlib

import pytest

from kerna import Message
from kerna._schema_exchange import (
    MAX_RECEIVED,
    WIRE_BATCHES,
    WIRE_KEY,
    SchemaExchange,
    reads_batches,
)
from kerna._wire_types import MessageTypes


class QuoteV1(Message, tag="x.quote"):
    symbol: str


class QuoteV2(Message, tag="x.quote"):  # a field added with a default: compatible
    symbol: str
    venue: str = ""


class QuoteV3(Message, tag="x.quote"):  # retyped: incompatible
    symbol: int


class Other(Message, tag="x.other"):  # known to one side only: compatible
    n: int


def _exchange(*types: type[Message]) -> SchemaExchange:
    registered = MessageTypes()
    registered.add_all(types)
    return SchemaExchange(registered)


def test_a_compatible_difference_is_logged_at_info_and_is_no_mismatch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kerna.remote")
    ours = _exchange(QuoteV1)
    ours.compare("tcp://peer:1", _exchange(QuoteV2, Other).document())
    assert ours.mismatches() == {}
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "differs compatibly" in caplog.records[0].getMessage()


def test_an_incompatible_difference_is_logged_once_with_what_breaks_and_listed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kerna.remote")
    ours = _exchange(QuoteV1)
    theirs = _exchange(QuoteV3).document()
    for _ in range(2):
        ours.compare("tcp://peer:1", theirs)
    assert ours.mismatches() == {"tcp://peer:1": ["x.quote"]}
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "retyped field 'symbol'" in record.getMessage()


def test_a_peer_that_sent_fingerprints_only_counts_each_differing_tag_as_a_mismatch() -> None:
    ours = _exchange(QuoteV1)
    ours.compare("tcp://old:1", json.dumps({"x.quote": "0000", "x.other": "1"}).encode())
    assert ours.mismatches() == {"tcp://old:1": ["x.quote"]}


@pytest.mark.parametrize(
    "sent",
    [
        zlib.compress(b"{" + b" " * (MAX_RECEIVED + 10) + b"}"),  # inflates past the bound
        b"\x78\x9c not zlib",
        zlib.compress(b"not json"),
        zlib.compress(b"[1, 2]"),
        b"",
    ],
)
def test_what_a_peer_sends_is_bounded_and_garbage_is_not_compared(sent: bytes) -> None:
    ours = _exchange(QuoteV1)
    ours.compare("tcp://hostile:1", sent)
    assert ours.mismatches() == {}


def test_a_document_too_large_to_send_falls_back_to_fingerprints() -> None:
    rng = random.Random(1)  # field names that do not compress away
    types = [
        type(
            f"M{i}",
            (Message,),
            {"__annotations__": {f"f{rng.getrandbits(64):x}": int for _ in range(40)}},
            tag=f"big.{i}",
        )
        for i in range(300)
    ]
    sent = _exchange(*types).document()
    assert sent[:1] == b"{"  # plain JSON: the fingerprints
    fingerprints = json.loads(sent)
    assert fingerprints.pop(WIRE_KEY) == WIRE_BATCHES  # what this node reads, as in full
    assert set(fingerprints) == {f"big.{i}" for i in range(300)}
    assert reads_batches("tcp://peer:1", sent)
