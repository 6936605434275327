"""The deterministic "work" of ``kerna demo``'s agents: regexes, word counts and hashes.

Plain functions over a document's text, with no agents and no I/O, so that the same
input always gives the same answer. ``CorruptDocument`` is the injected fault: a body
with NUL bytes makes ``classify`` and ``keywords`` raise it.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

__all__ = [
    "CATEGORIES",
    "CorruptDocument",
    "classify",
    "entities",
    "index_key",
    "keywords",
    "storage_tier",
    "tokens",
]

_MARKUP = re.compile(r"<[^>]*>")
_ENTITY = re.compile(
    r"[A-Z][a-z]+ [A-Z][a-z]+"  # a person: two capitalised words
    r"|[$\d][\d,.-]{7,}\d"  # an amount ($1,234.56) or a date (2024-03-01)
    r"|\b[a-z]+@[a-z.]+[a-z]"  # an email address
)
_TIER = re.compile(r'tier="(\w+)"')
CATEGORIES: dict[str, frozenset[str]] = {
    "invoice": frozenset({"invoice", "payment", "amount", "due", "billing"}),
    "contract": frozenset({"agreement", "party", "clause", "term", "signed"}),
    "report": frozenset({"quarter", "revenue", "growth", "analysis", "forecast"}),
    "memo": frozenset({"meeting", "team", "schedule", "update", "reminder"}),
}
_STOPWORDS = frozenset({"the", "and", "for", "with", "this", "that", "from", "will", "are"})


class CorruptDocument(ValueError):
    """The document body holds bytes no text could contain (the injected fault)."""


def _check_intact(doc_id: int, body: str) -> None:
    if "\x00" in body:
        raise CorruptDocument(f"document {doc_id} is corrupted (NUL bytes in the body)")


def tokens(body: str) -> list[str]:
    """The words of a document: markup stripped, split on whitespace."""
    return _MARKUP.sub(" ", body).split()


def entities(body: str) -> tuple[str, ...]:
    """People, emails, amounts and dates, each once, in order of first occurrence."""
    return tuple(dict.fromkeys(_ENTITY.findall(body)))


def storage_tier(body: str) -> str:
    """The document's storage tier: its ``tier`` attribute, ``"hot"`` when it has none."""
    match = _TIER.search(body)
    return match.group(1) if match else "hot"


def classify(doc_id: int, body: str) -> str:
    """The category whose keywords occur most often (ties: the first category)."""
    _check_intact(doc_id, body)
    counts = Counter(tokens(body))
    scores = {label: sum(counts[k] for k in keys) for label, keys in CATEGORIES.items()}
    return max(scores, key=scores.__getitem__)


def keywords(doc_id: int, body: str, top: int = 5) -> tuple[str, ...]:
    """The ``top`` most frequent content words (ties: first occurrence wins)."""
    _check_intact(doc_id, body)
    counts = Counter(tokens(body.lower()))
    ranked = (w for w, _ in counts.most_common()[: 3 * top])
    return tuple(w for w in ranked if len(w) > 3 and w not in _STOPWORDS)[:top]


def index_key(keywords: tuple[str, ...]) -> str:
    """Where a document's keywords land in the (imaginary) index."""
    joined = "\x1f".join(keywords).encode()
    return hashlib.blake2b(joined, digest_size=6, salt=b"kerna").hexdigest()
