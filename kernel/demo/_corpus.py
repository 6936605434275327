"""The synthetic corpus of ``kerna demo``: documents and their faults, from a seed.

``make_corpus`` writes documents whose category keywords (``CATEGORIES``) the Classifier
will find, and injects the faults that ``fault_plan`` predicts from its own random
stream, so a test can know the failure counts without generating the text.
"""

from __future__ import annotations

import itertools
import random

from ._work import CATEGORIES

__all__ = ["fault_plan", "make_corpus"]

_VOCAB = [
    "the",
    "and",
    "for",
    "with",
    "this",
    "that",
    "from",
    "will",
    "are",
    "data",
    "system",
    "customer",
    "order",
    "project",
    "service",
    "account",
    "review",
    "policy",
    "product",
    "market",
    "office",
    "support",
    "quality",
    "process",
    "change",
    "request",
    "record",
    "detail",
    "period",
    "budget",
    "total",
    "status",
    "client",
    "value",
]
_FIRST = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken")
_LAST = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
_LABELS = sorted(CATEGORIES)
# Per category: its keywords (each four times as likely as a common word), then the rest.
_POOLS = {label: (*sorted(CATEGORIES[label]), *_VOCAB) for label in _LABELS}
_CUM_WEIGHTS = {
    label: list(itertools.accumulate(4.0 if word in CATEGORIES[label] else 1.0 for word in pool))
    for label, pool in _POOLS.items()
}


def fault_plan(
    docs: int, seed: int = 0, corrupt_rate: float = 0.005, stall_rate: float = 0.001
) -> list[str]:
    """The fault of each document: ``""``, ``"corrupt"`` or ``"stall"``.

    Its own random stream (seeded from ``seed``), so predicting faults does not need the
    text. A corrupted document fails its Classifier (dead letter) and its Summarizer
    (``RemoteError``); a stalled one times out in the Indexer (``AskTimeout``).

    A document is corrupted with probability ``corrupt_rate``; one that is not (and so
    reaches the index step) stalls with probability ``stall_rate``. The two rates are
    independent: any two between 0 and 1 make a plan.
    """
    rng = random.Random(f"kerna-demo:{seed}:faults")
    stalls_below = corrupt_rate + stall_rate * (1.0 - corrupt_rate)
    plan = []
    for _ in range(docs):
        roll = rng.random()
        plan.append("corrupt" if roll < corrupt_rate else "stall" if roll < stalls_below else "")
    return plan


def make_corpus(
    docs: int, seed: int = 0, corrupt_rate: float = 0.005, stall_rate: float = 0.001
) -> list[tuple[int, str]]:
    """``docs`` synthetic ``(doc_id, body)`` documents, the same for the same arguments."""
    rng = random.Random(f"kerna-demo:{seed}:text")
    corpus = []
    for doc_id, fault in enumerate(fault_plan(docs, seed, corrupt_rate, stall_rate)):
        label = rng.choice(_LABELS)
        words = rng.choices(_POOLS[label], cum_weights=_CUM_WEIGHTS[label], k=rng.randint(30, 56))
        half = len(words) // 2
        person = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        email = f"{person.split()[0].lower()}@example.com"
        amount = f"${rng.randint(10, 99_999):,}.{rng.randint(0, 99):02d}"
        date = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        body = (
            f'<doc id="{doc_id}" tier="{"cold" if fault == "stall" else "hot"}">'
            f"<p>{' '.join(words[:half])} {person}</p>"
            f"<p>{' '.join(words[half:])} {amount} by {date}, contact {email}</p></doc>"
        )
        if fault == "corrupt":
            cut = rng.randrange(len(body))
            body = body[:cut] + "\x00\x00\x7f" + body[cut:]
        corpus.append((doc_id, body))
    return corpus
