"""Typed asks: ``Request[Reply]`` messages, their handlers' checked return annotations.

The static half (``ask``'s result type follows the request) is ``tests/typecheck/
typed_asks.py``, type-checked by ``make typecheck``; its functions run here too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from kerna import (
    BlockingKernel,
    Kernel,
    Message,
    Request,
)

from .typecheck.typed_asks import Echo, asks, blocking_asks

pytestmark = pytest.mark.anyio


class Reply(Message):
    n: int


class SubReply(Reply):
    pass


class Echoed(Message):
    text: str


class Ask(Request[Reply]):
    n: int


class LoudAsk(Ask):
    pass


class Shout(Request[Echoed]):
    text: str


class Find(Request[Reply | None]):
    n: int


class Ack(Request[None]):
    pass


class Tagged(Request[Reply], tag="ask.tagged"):
    n: int


class Quoted(Request["Reply"]):
    n: int


class Dangling(Request["NotDefinedAnywhere"]):
    """Its reply type never resolves: registering a handler of it is refused."""


class Tick(Message):
    pass


ROOT = Path(__file__).resolve().parent.parent

# Mistakes mypy --strict must report, one per line (the line numbers are asserted).
MISTAKES = """\
from kerna import BlockingKernel, Kernel
from tests.typecheck.typed_asks import Echo, Note, Ping

async def mistakes(kernel: Kernel, blocking: BlockingKernel) -> str:
    text: str = await kernel.ref(Echo, "a").ask(Ping(n=1))
    other: str = blocking.ref(Echo, "a").ask(Ping(n=1))
    anything: str = await kernel.ref(Echo, "a").ask(Note(n=1))
    await kernel.ref(Echo, "a").ask(3)
    return await kernel.ref(Echo, "a").ask(Ping(n=1))
"""


def test_mypy_reports_a_reply_used_as_another_type(tmp_path: Path) -> None:
    """Also where the result goes straight into a typed variable or a return.

    There, overloads ``Request[R] -> R`` / ``Message -> Any`` would let mypy fall back to
    ``Any`` silently (its type context makes the first one fail); see ``Askable``.
    """
    source = tmp_path / "mistakes.py"
    source.write_text(MISTAKES)
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), str(source)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    errors = re.findall(r"^\S*mistakes\.py:(\d+): error: (.*)  \[([a-z-]+)\]$", run.stdout, re.M)
    assert [(int(line), code) for line, _, code in errors] == [
        (5, "arg-type"),  # an awaited ask into a str
        (6, "assignment"),  # a BlockingRef ask into a str
        # line 7: a plain Message replies Any, so anything goes
        (8, "call-overload"),  # not a message
        (9, "arg-type"),  # returned from a function declared -> str
    ], run.stdout + run.stderr
    assert 'incompatible type "Ping"; expected "Request[str]"' in errors[0][1]


async def test_asks_with_requests_return_their_declared_replies(kernel: Kernel) -> None:
    kernel.register(Echo)
    await asks(kernel)


def test_blocking_asks_with_requests_return_their_declared_replies() -> None:
    with BlockingKernel(ask_timeout=5) as kernel:
        kernel.register(Echo)
        blocking_asks(kernel)


def test_a_request_is_a_frozen_tagged_message_like_any_other() -> None:
    assert Ask.__struct_config__.tag == f"{__name__}.Ask"
    assert Tagged.__struct_config__.tag == "ask.tagged"
    assert Ask.__struct_config__.frozen
    assert Ask.__struct_fields__ == ("n",)  # the type argument adds no field
    ask = Ask(n=1)
    with pytest.raises(AttributeError):
        ask.n = 2  # type: ignore[misc]
    assert hash(ask) == hash(Ask(n=1))
    with pytest.raises(TypeError, match="immutable"):

        class Mutable(Request[Reply], frozen=False):  # type: ignore[call-arg]
            n: int


def test_a_request_round_trips_through_msgspec_with_its_tag() -> None:
    for codec in (msgspec.msgpack, msgspec.json):
        wire = codec.encode(Ask(n=3))
        assert codec.decode(wire, type=Ask) == Ask(n=3)
        # tagged: a union of requests and plain messages decodes to the right class
        either = Ask | LoudAsk | Tagged | Reply
        assert type(codec.decode(codec.encode(LoudAsk(n=4)), type=either)) is LoudAsk
        assert codec.decode(codec.encode(Tagged(n=5)), type=either) == Tagged(n=5)
    assert msgspec.json.decode(msgspec.json.encode(Tagged(n=5))) == {"type": "ask.tagged", "n": 5}
    assert msgspec.json.schema(Ask)["$ref"].endswith("/Ask")


def test_a_request_cannot_declare_a_second_reply_type() -> None:
    with pytest.raises(
        TypeError,
        match=r"Narrowed: a request has one reply type.*Request\[Reply\] and Request\[SubReply\]",
    ):

        class Narrowed(Ask, Request[SubReply]):
            pass
