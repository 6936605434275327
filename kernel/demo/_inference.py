"""The cost and degradation story of ``kerna demo``: a model behind a cache, a batcher
and a circuit breaker, with a keyword filter to fall back on.

After its summary, the Orchestrator asks a best-effort ``Sentiment`` shard for the
document's mood::

    Orchestrator --ask--> Sentiment/s<k> --ask--> Scorer (@cached) --ask--> Model (@batched)
                  \\__ Resilience: a breaker per shard, the keyword filter as fallback

- ``Model.infer`` is the simulated model call: ``MODEL_FIXED_S`` plus ``MODEL_ITEM_S``
  per item, slept on the loop's clock; ``@batched`` makes one call of many asks.
- ``Scorer.score`` is ``@cached`` by phrase (the summary's top keywords): identical
  phrases, concurrent or later, cost one model item.
- One seeded shard of ``Sentiment`` is down for the whole run (``down_shard``): its
  calls raise ``ConnectionError``, its breaker opens after ``BREAKER_FAILURES`` of
  them and then fails the rest fast; each of its documents is answered by
  ``keyword_mood`` instead and marked degraded (``is_degraded``).

What is deterministic: which documents reach the model, the distinct phrases (the
cache's misses), which documents are degraded (every call to the down shard: failed or
refused) and the breaker openings (one: the shard's ``reset_timeout`` outlasts the run).
How many asks one model call carries depends on what arrives while the previous call
runs and within ``max_wait``: on a real clock that is timing (the CPU's speed, the
machine's load). The demo runs by default on a virtual clock (``loop="virtual"`` in
``_driver``), where the model's sleep and the batch window are simulated time that
moves only when every task waits: the kernel's work then takes no simulated time, each
batch holds every ask that its window saw coming, and the model calls are the same
count on every run.
"""

from __future__ import annotations

import asyncio
import hashlib
import random

import msgspec

from kerna import Agent, AgentId, Kernel, Request, handler
from kerna.plugins import (
    Breaker,
    Failed,
    Policy,
    Resilience,
    batch_stats,
    batched,
    cache_stats,
    cached,
    is_degraded,
)

from ._messages import Mood, Scored

__all__ = [
    "BREAKER_FAILURES",
    "MODEL_FIXED_S",
    "MODEL_ITEM_S",
    "SENTIMENT_SHARDS",
    "Analyse",
    "InferenceCounts",
    "Model",
    "Score",
    "Scorer",
    "Sentiment",
    "down_shard",
    "inference_counts",
    "install_inference",
    "is_degraded",
    "keyword_mood",
    "phrase",
    "sentiment_resilience",
]

MODEL_FIXED_S = 0.002
"""Seconds of one simulated model call, whatever its batch size."""
MODEL_ITEM_S = 0.0001
"""Seconds the simulated model adds per item of a batch."""
SENTIMENT_SHARDS = tuple(f"s{k}" for k in range(8))
"""The Sentiment agents (by document id); one of them is down (``down_shard``)."""
BREAKER_FAILURES = 3
"""Consecutive failures that open a Sentiment shard's breaker."""
_RESET_S = 3600.0  # longer than any demo run: a down shard's breaker opens exactly once
_POSITIVE = frozenset({"growth", "revenue", "signed", "payment", "agreement", "quality"})
_NEGATIVE = frozenset({"due", "change", "request", "billing", "clause"})


class Analyse(Request[Mood], tag="demo.sentiment.analyse"):
    """How does a document read? ``text`` is its summary's keywords."""

    doc_id: int
    text: str


class Score(Request[Scored], tag="demo.sentiment.score"):
    phrase: str


def phrase(text: str) -> str:
    """What the model scores: the first two keywords (identical phrases recur)."""
    return " ".join(text.split()[:2])


def down_shard(seed: int) -> str:
    """The Sentiment shard that is down in the run of ``seed`` (its own random stream)."""
    return random.Random(f"kerna-demo:{seed}:sentiment").choice(SENTIMENT_SHARDS)


def _label(score: float) -> str:
    return "positive" if score > 0.2 else "negative" if score < -0.2 else "neutral"


class Model(Agent):
    """The simulated model: one call scores a batch, at a fixed cost plus one per item."""

    @batched(max_size=64, max_wait=0.002)
    async def infer(self, batch: list[Score]) -> list[Scored]:
        await asyncio.sleep(MODEL_FIXED_S + MODEL_ITEM_S * len(batch))
        return [Scored(score=_score(item.phrase)) for item in batch]


def _score(text: str) -> float:
    digest = hashlib.blake2b(text.encode(), digest_size=2).digest()
    return int.from_bytes(digest) / 32767.5 - 1.0


class Scorer(Agent):
    """Scores a phrase with the Model; ``@cached``: each distinct phrase costs once."""

    @handler
    @cached(ttl=3600, maxsize=100_000)
    async def score(self, msg: Score) -> Scored:
        reply: Scored = await self.ref(Model, "m").ask(msg)
        return reply


class Sentiment(Agent):
    """A best-effort sentiment replica (``Sentiment/s<k>``, by document id).

    Registered with ``factory=lambda: Sentiment(down)``: the replica whose key is
    ``down`` raises ``ConnectionError`` on every call; the others score the phrase.
    """

    def __init__(self, down: str) -> None:
        self.down = down  # the key of the replica that is down

    @handler
    async def analyse(self, msg: Analyse) -> Mood:
        if self.id.key == self.down:
            raise ConnectionError(f"sentiment replica {self.id.key} is down")
        score = Score(phrase=phrase(msg.text))
        scored: Scored = await self.ref(Scorer, self.id.key).ask(score)
        return Mood(label=_label(scored.score), source="model")


async def keyword_mood(failed: Failed) -> Mood:
    """The fallback: keyword filtering, no model (the seed's degraded mode)."""
    # An agent target: the context is the message asked, an ``Analyse``.
    message = failed.context.message if failed.context is not None else None
    words = set(message.text.split()) if isinstance(message, Analyse) else set()
    balance = len(words & _POSITIVE) - len(words & _NEGATIVE)
    label = "positive" if balance > 0 else "negative" if balance < 0 else "neutral"
    return Mood(label=label, source="keywords")


class InferenceCounts(msgspec.Struct, frozen=True):
    """What the model, its cache, its batcher and the breakers did in one run.

    Attributes:
        requests: phrases the healthy Sentiment shards asked the Scorer to score.
        computed: cache misses: the distinct phrases, the items the model had to score.
        saved_by_cache: ``requests - computed`` (answered from the cache or coalesced).
        model_calls: calls of the model (batches): the same every run on the demo's
            virtual clock; on a real-time loop timing decides how many items each
            carries, and this count varies from run to run.
        saved_by_batching: ``computed - model_calls``.
        breaker_openings: times a Sentiment shard's breaker opened.
        failed: calls that reached a down shard and failed (what opened its breaker).
        failed_fast: calls the open breakers refused at once with ``CircuitOpen``.
        fallbacks: asks answered by the keyword filter (the degraded results).
    """

    requests: int = 0
    computed: int = 0
    saved_by_cache: int = 0
    model_calls: int = 0
    saved_by_batching: int = 0
    breaker_openings: int = 0
    failed: int = 0
    failed_fast: int = 0
    fallbacks: int = 0


def sentiment_resilience() -> Resilience:
    """One best-effort policy, a breaker per Sentiment shard, the keyword fallback."""
    policy = Policy(
        tier="best_effort",
        timeout=2.0,
        breaker=Breaker(failures=BREAKER_FAILURES, reset_timeout=_RESET_S),
        fallback=keyword_mood,
        # A replica serves one call at a time; it also keeps the breaker's count exact:
        # exactly BREAKER_FAILURES calls reach a down shard, every later one is refused
        # (with more in flight, how many fail before it opens would be up to timing).
        bulkhead=1,
    )
    # A target per shard (an AgentId): one shard's breaker opening spares the others.
    targets: dict[type[Agent] | AgentId | str, str] = {
        AgentId("Sentiment", key): "sentiment" for key in SENTIMENT_SHARDS
    }
    return Resilience(policies={"sentiment": policy}, targets=targets)


def install_inference(kernel: Kernel, seed: int) -> None:
    """Register the Sentiment shards (one down, per ``seed``), the Scorer and the Model.

    The kernel must run ``sentiment_resilience()`` among its middleware.
    """
    down = down_shard(seed)
    # The best-effort tier's mailbox (what ``tier_options("best_effort")`` gives, spelt
    # out: its ``dict[str, str]`` does not type-check as ``**`` keyword arguments).
    kernel.register(Sentiment, factory=lambda: Sentiment(down), overflow="drop_oldest")
    kernel.register(Scorer)
    kernel.register(Model)


def inference_counts(kernel: Kernel, resilience: Resilience) -> InferenceCounts:
    """Read the counters of a run (before the kernel stops)."""
    cache = cache_stats(kernel, Scorer.score)
    batches = batch_stats(kernel, Model.infer)
    requests = cache.hits + cache.misses + cache.coalesced
    openings = failed = failed_fast = fallbacks = 0
    for key in SENTIMENT_SHARDS:
        target = resilience.target_stats(AgentId("Sentiment", key))
        fallbacks += target.fallbacks
        failed += target.fallbacks - (target.breaker.rejected if target.breaker else 0)
        if target.breaker is not None:
            openings += target.breaker.opened
            failed_fast += target.breaker.rejected
    return InferenceCounts(
        requests=requests,
        computed=cache.misses,
        saved_by_cache=requests - cache.misses,
        model_calls=batches.batches,
        saved_by_batching=batches.items - batches.batches,
        breaker_openings=openings,
        failed=failed,
        failed_fast=failed_fast,
        fallbacks=fallbacks,
    )
