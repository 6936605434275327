"""Typed asks: ``Request[Reply]`` messages, their handlers' checked return annotations.

The static half (``ask``'s result type follows the request) is ``tests/typecheck/
typed_asks.py``, type-checked by ``make typecheck``; its functions run here too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kerna import (
    Agent,
    BlockingKernel,
    Kernel,
    Message,
    PendingReply,
    RegistrationError,
    Request,
    handler,
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


async def test_a_handler_may_return_the_reply_or_a_subclass_of_it(kernel: Kernel) -> None:
    class Exact(Agent):
        @handler
        async def on(self, msg: Ask) -> Reply:
            return Reply(n=msg.n)

    class Narrower(Agent):
        @handler
        async def on(self, msg: Ask) -> SubReply:
            return SubReply(n=msg.n)

    kernel.register(Exact)
    kernel.register(Narrower)
    assert await kernel.ref(Exact, "a").ask(Ask(n=1), timeout=5) == Reply(n=1)
    assert type(await kernel.ref(Narrower, "a").ask(Ask(n=2), timeout=5)) is SubReply


async def test_a_handler_returning_another_type_is_refused_with_all_the_names(
    kernel: Kernel,
) -> None:
    class Wrong(Agent):
        @handler
        async def on_ask(self, msg: Ask) -> str:
            return "nope"

    with pytest.raises(RegistrationError) as caught:
        kernel.register(Wrong)
    text = str(caught.value)
    # the handler, the request type, its declared reply, the annotation
    assert "Wrong.on_ask" in text
    assert "returns str" in text
    assert "Ask is a Request[Reply]" in text
    assert "'-> Reply'" in text


async def test_a_handler_of_a_subclass_is_checked_against_the_inherited_reply(
    kernel: Kernel,
) -> None:
    class Wrong(Agent):
        @handler
        async def on(self, msg: LoudAsk) -> Echoed:
            return Echoed(text="")

    with pytest.raises(RegistrationError, match=r"LoudAsk is a Request\[Reply\]"):
        kernel.register(Wrong)


async def test_a_handler_forgetting_its_reply_is_refused(kernel: Kernel) -> None:
    class Forgetful(Agent):
        @handler
        async def on(self, msg: Ask) -> None:
            return None

    with pytest.raises(RegistrationError, match=r"Forgetful.on: returns None") as caught:
        kernel.register(Forgetful)
    assert "'-> PendingReply'" in str(caught.value)  # the hint for a deferred reply


async def test_a_handler_deferring_its_reply_returns_the_pending_reply(kernel: Kernel) -> None:
    class Later(Agent):
        @handler
        async def on(self, msg: Ask) -> PendingReply:
            pending = self.defer_reply()
            pending.reply(Reply(n=msg.n))  # or later, from another handler
            return pending

    class NowOrLater(Agent):
        @handler
        async def on(self, msg: Ask) -> Reply | PendingReply:
            if msg.n > 0:
                return Reply(n=msg.n)
            pending = self.defer_reply()
            pending.reply(Reply(n=0))
            return pending

    class NowWrong(Agent):
        @handler
        async def on(self, msg: Ask) -> str | PendingReply:
            return ""

    kernel.register(Later)
    kernel.register(NowOrLater)
    assert await kernel.ref(Later, "a").ask(Ask(n=1), timeout=5) == Reply(n=1)
    assert await kernel.ref(NowOrLater, "a").ask(Ask(n=0), timeout=5) == Reply(n=0)
    with pytest.raises(RegistrationError, match=r"NowWrong.on: returns str \| PendingReply"):
        kernel.register(NowWrong)


async def test_a_handler_that_may_return_none_needs_a_request_that_allows_none(
    kernel: Kernel,
) -> None:
    class Maybe(Agent):
        @handler
        async def on(self, msg: Ask) -> Reply | None:
            return None

    with pytest.raises(RegistrationError) as caught:
        kernel.register(Maybe)
    assert "Maybe.on: returns Reply | None" in str(caught.value)
    assert "None is not a reply of Ask (Request[Reply])" in str(caught.value)
    assert "Request[Reply | None]" in str(caught.value)  # the hint: declare it optional

    class Finder(Agent):
        @handler
        async def on(self, msg: Find) -> Reply | None:
            return None if msg.n < 0 else Reply(n=msg.n)

    kernel.register(Finder)
    assert await kernel.ref(Finder, "a").ask(Find(n=-1), timeout=5) is None
    assert await kernel.ref(Finder, "a").ask(Find(n=1), timeout=5) == Reply(n=1)


async def test_a_request_of_none_is_answered_by_a_handler_returning_none(
    kernel: Kernel,
) -> None:
    class Acker(Agent):
        @handler
        async def on(self, msg: Ack) -> None:
            return None

    kernel.register(Acker)
    assert await kernel.ref(Acker, "a").ask(Ack(), timeout=5) is None

    class Chatty(Agent):
        @handler
        async def on(self, msg: Ack) -> Reply:
            return Reply(n=0)

    with pytest.raises(
        RegistrationError, match=r"Chatty.on: returns Reply, but Ack is a Request\[None\]"
    ):
        kernel.register(Chatty)


async def test_a_handler_without_return_annotation_or_returning_any_is_not_checked(
    kernel: Kernel,
) -> None:
    class Unannotated(Agent):
        @handler
        async def on(self, msg: Ask):  # type: ignore[no-untyped-def]
            return Reply(n=msg.n)

    class Loose(Agent):
        @handler
        async def on(self, msg: Ask) -> Any:
            return Reply(n=msg.n)

    kernel.register(Unannotated)
    kernel.register(Loose)
    assert await kernel.ref(Unannotated, "a").ask(Ask(n=1), timeout=5) == Reply(n=1)
    assert await kernel.ref(Loose, "a").ask(Ask(n=2), timeout=5) == Reply(n=2)


async def test_a_union_handler_returns_each_request_its_own_reply(kernel: Kernel) -> None:
    class Both(Agent):
        @handler
        async def on(self, msg: Ask | Shout) -> Reply | Echoed:
            if isinstance(msg, Ask):
                return Reply(n=msg.n)
            return Echoed(text=msg.text)

    kernel.register(Both)
    ref = kernel.ref(Both, "a")
    assert await ref.ask(Ask(n=1), timeout=5) == Reply(n=1)
    assert await ref.ask(Shout(text="hi"), timeout=5) == Echoed(text="hi")


async def test_a_union_handler_must_cover_every_request_and_nothing_else(
    kernel: Kernel,
) -> None:
    class Missing(Agent):
        @handler
        async def on(self, msg: Ask | Shout) -> Reply:
            return Reply(n=0)

    with pytest.raises(
        RegistrationError, match=r"Missing.on: returns Reply, but Shout is a Request\[Echoed\]"
    ):
        kernel.register(Missing)

    class Stray(Agent):
        @handler
        async def on(self, msg: Ask | Shout) -> Reply | Echoed | str:
            return ""

    with pytest.raises(
        RegistrationError, match=r"Stray.on: returns Reply \| Echoed \| str, but str is not"
    ):
        kernel.register(Stray)


async def test_a_handler_of_requests_and_plain_messages_only_checks_the_requests(
    kernel: Kernel,
) -> None:
    class Mixed(Agent):
        @handler
        async def on(self, msg: Ask | Tick) -> Reply | None:
            return Reply(n=msg.n) if isinstance(msg, Ask) else None

    kernel.register(Mixed)  # Tick's reply is Any, so None may be its answer
    assert await kernel.ref(Mixed, "a").ask(Ask(n=3), timeout=5) == Reply(n=3)

    class Wrong(Agent):
        @handler
        async def on(self, msg: Ask | Tick) -> str:
            return ""

    with pytest.raises(
        RegistrationError, match=r"Wrong.on: returns str, but Ask is a Request\[Reply\]"
    ):
        kernel.register(Wrong)


async def test_a_quoted_reply_type_is_resolved_at_registration(kernel: Kernel) -> None:
    class Right(Agent):
        @handler
        async def on(self, msg: Quoted) -> Reply:
            return Reply(n=msg.n)

    class Wrong(Agent):
        @handler
        async def on(self, msg: Quoted) -> Echoed:
            return Echoed(text="")

    kernel.register(Right)
    with pytest.raises(RegistrationError, match=r"Quoted is a Request\[Reply\]"):
        kernel.register(Wrong)

    class Lost(Agent):
        @handler
        async def on(self, msg: Dangling) -> Reply:
            return Reply(n=0)

    with pytest.raises(
        RegistrationError,
        match=r"Lost.on: cannot resolve the reply type 'NotDefinedAnywhere' of Dangling",
    ):
        kernel.register(Lost)


async def test_a_plain_message_handler_may_return_anything(kernel: Kernel) -> None:
    class Plain(Agent):
        @handler
        async def on(self, msg: Tick) -> str:
            return "tock"

    kernel.register(Plain)
    assert await kernel.ref(Plain, "a").ask(Tick(), timeout=5) == "tock"
