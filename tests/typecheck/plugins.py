"""Typed asks through ``kerna.plugins``' decorators, checked statically by ``make
typecheck`` (mypy --strict): ``@cached`` keeps the handler's type, and a ``@batched``
handler's element types are what its askers see. ``tests/test_plugins_typed.py`` runs
``asks`` against a real kernel: the static types are the runtime types.
"""

from __future__ import annotations

from typing import assert_type

from kerna import Agent, Kernel, Message, Request, handler
from kerna.plugins import batched, cached, tier_options


class Summary(Message):
    text: str


class Summarize(Request[Summary]):
    text: str


class Completion(Message):
    text: str


class Prompt(Request[Completion]):
    text: str


class Summarizer(Agent):
    @handler
    @cached(ttl=60, maxsize=10_000)
    async def summarize(self, msg: Summarize) -> Summary:
        return Summary(text=msg.text[:10])


class Model(Agent):
    @batched(max_size=64, max_wait=0.005)
    async def infer(self, batch: list[Prompt]) -> list[Completion | Exception]:
        return [Completion(text=p.text.upper()) for p in batch]


async def asks(kernel: Kernel) -> tuple[Summary, Completion]:
    summary = await kernel.ref(Summarizer, "s").ask(Summarize(text="a long text"))
    assert_type(summary, Summary)
    completion = await kernel.ref(Model, "m").ask(Prompt(text="hi"))
    assert_type(completion, Completion)
    return summary, completion


def _tiers(kernel: Kernel) -> None:
    # tier_options' result spreads into register under mypy --strict
    kernel.register(Summarizer, **tier_options("best_effort"))
