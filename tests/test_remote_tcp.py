"""Two kernels over tcp://: remote asks, and schema fingerprints compared in the
handshake (a differing message schema is logged once and reported; over nats:// too,
through its presence probes)."""

from __future__ import annotations

import logging

import pytest

from kerna import Agent, Kernel, Message, RemoteError, Request, handler

pytestmark = pytest.mark.anyio


class Answer(Message, tag="test.answer"):
    text: str


class Question(Request[Answer], tag="test.question"):
    text: str


class QuestionV2(Request[Answer], tag="test.question"):  # the same tag, retyped field
    text: int


class Oracle(Agent):
    @handler
    async def ask(self, msg: Question) -> Answer:
        return Answer(text=msg.text.upper())


class Oracle2(Agent):
    @handler
    async def ask(self, msg: QuestionV2) -> Answer:
        return Answer(text=str(msg.text))


async def test_two_kernels_answer_each_other_over_tcp_with_a_secret() -> None:
    options = {"secret": b"cluster secret", "heartbeat": None}
    async with (
        Kernel(transport="tcp://127.0.0.1:0", transport_options=options) as a,
        Kernel(transport="tcp://127.0.0.1:0", transport_options=options) as b,
    ):
        b.register(Oracle)
        ref = a.ref(Oracle, "o", node=b.address)
        assert await ref.ask(Question(text="hi"), timeout=5) == Answer(text="HI")
        assert a.schema_mismatches() == {}


@pytest.mark.parametrize("scheme", ["tcp", "nats"])
async def test_a_schema_that_differs_is_logged_once_and_reported(
    caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest, scheme: str
) -> None:
    # tcp compares in its handshake; nats in its presence probes and their answers
    if scheme == "tcp":
        url, options = "tcp://127.0.0.1:0", {"heartbeat": None}
    else:
        url, options = request.getfixturevalue("nats_server").url, {}
    a = Kernel(transport=url, transport_options=options)
    b = Kernel(transport=url, transport_options=options)
    a.register(Oracle)  # a knows test.question with text: str
    b.register(Oracle2)  # b knows it with text: int
    async with a, b:
        caplog.set_level(logging.WARNING, logger="kerna.remote")
        for _ in range(2):  # compared and logged once per peer, however many frames
            with pytest.raises(RemoteError, match="bad_payload"):
                await a.ref("Oracle2", "o", node=b.address).ask(Question(text="x"), timeout=5)
            with pytest.raises(RemoteError, match="bad_payload"):
                await b.ref("Oracle", "o", node=a.address).ask(QuestionV2(text=1), timeout=5)
        assert a.schema_mismatches() == {b.address: ["test.question"]}
        assert b.schema_mismatches() == {a.address: ["test.question"]}
        warnings = [r for r in caplog.records if "schema of 'test.question'" in r.getMessage()]
        assert len(warnings) == 2  # once on each side
