"""The messages of ``kerna demo``'s document pipeline (see ``kerna.demo._agents``).

Events the driver publishes, the parts the choreographed stages contribute to a
document's aggregate, and the requests and answers of the orchestrated path. Each has a
fixed wire tag (``demo.doc.*``).
"""

from __future__ import annotations

from typing import ClassVar

from kerna import Message

__all__ = [
    "Classified",
    "DocumentSettled",
    "DocumentUploaded",
    "EntitiesFound",
    "IndexDocument",
    "Indexed",
    "Mood",
    "Orchestrated",
    "PartFailed",
    "ProcessDocument",
    "ProcessResult",
    "Scored",
    "StagePart",
    "Summarize",
    "Summary",
    "TextExtracted",
]


class DocumentUploaded(Message, tag="demo.doc.uploaded"):
    """A document arrived; ``uploaded_at`` is ``time.perf_counter()`` at publish time."""

    doc_id: int
    body: str
    uploaded_at: float


class StagePart(Message, tag="demo.doc.part"):
    """What one stage contributes to a document's aggregate (base class)."""

    stage: ClassVar[str] = ""
    doc_id: int
    uploaded_at: float
    done_at: float


class TextExtracted(StagePart, tag="demo.doc.text"):
    stage: ClassVar[str] = "extract"
    words: int
    digest: str


class EntitiesFound(StagePart, tag="demo.doc.entities"):
    stage: ClassVar[str] = "entities"
    entities: tuple[str, ...]


class Classified(StagePart, tag="demo.doc.classified"):
    stage: ClassVar[str] = "classify"
    label: str


class PartFailed(StagePart, tag="demo.doc.part_failed"):
    """A stage failed on the document (learnt from the dead-letter topic)."""

    failed_stage: str
    error: str


class DocumentSettled(Message, tag="demo.doc.settled"):
    """Every stage reported: ``latencies`` holds (stage, seconds since upload) pairs."""

    doc_id: int
    uploaded_at: float
    settled_at: float
    latencies: tuple[tuple[str, float], ...]
    errors: tuple[str, ...]


class ProcessDocument(Message, tag="demo.doc.process"):
    doc_id: int
    body: str
    uploaded_at: float


class ProcessResult(Message, tag="demo.doc.result"):
    """The Orchestrator's answer: ``outcome`` is ``"ok"``, ``"error"`` or ``"timeout"``."""

    doc_id: int
    outcome: str
    step: str | None = None
    error: str | None = None
    degraded: bool = False
    keywords: tuple[str, ...] = ()


class Summarize(Message, tag="demo.doc.summarize"):
    doc_id: int
    body: str


class Summary(Message, tag="demo.doc.summary"):
    doc_id: int
    keywords: tuple[str, ...]
    tier: str


class IndexDocument(Message, tag="demo.doc.index"):
    doc_id: int
    keywords: tuple[str, ...]
    tier: str


class Indexed(Message, tag="demo.doc.indexed"):
    doc_id: int
    index_key: str


class Orchestrated(Message, tag="demo.doc.orchestrated"):
    """How the orchestrated path ended for a document (sent to the Collector).

    ``outcome`` is as in ``ProcessResult``; a failure names its ``step`` and its
    ``error`` as ``"TypeName: text"``.
    """

    doc_id: int
    uploaded_at: float
    finished_at: float
    outcome: str
    step: str | None = None
    error: str | None = None
    degraded: bool = False


class Mood(Message, tag="demo.sentiment.mood"):
    """A document's sentiment; ``source`` is ``"model"`` or ``"keywords"`` (fallback)."""

    label: str
    source: str


class Scored(Message, tag="demo.sentiment.scored"):
    """The model's score of a phrase, from -1 (negative) to 1 (positive)."""

    score: float
