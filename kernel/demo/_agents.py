"""The agents of ``kerna demo``: one document pipeline, run two ways at once.

Choreography (nobody is in charge; agents react to an event)::

    driver --publish--> "documents.uploaded" --> TextExtractor/s<k>   --tell--+
                                             --> EntityExtractor/s<k> --tell--+
                                             --> Classifier/s<k>      --tell--+
                                                                              v
    stage raised --> "kerna.dead_letters" --> DeadLetterWatcher --tell--> DocumentAggregate/<doc>
                                                                              | all parts in
                                                                              v
                                                                          Collector

Orchestration (one agent in charge, asking in sequence, each step with a timeout)::

    driver --ask--> Orchestrator/w<n> --ask--> Summarizer/s<k>
                                      --ask--> Indexer/s<k> (hot tier) or Archive/<doc> (cold)
                                      --tell--> Collector

Stages are sharded over a few keys (``s0``..``s3``, by document id), so several
activations of one type take turns on the loop; aggregates are one virtual agent per
document and deactivate themselves once settled, so 20,000 of them never pile up.

The work is deterministic and local: regexes, word counts and hashes over synthetic text.
Faults are part of the text the driver generates: a *corrupted* document (NUL bytes)
makes the Classifier and the Summarizer raise; a document on the *cold* tier goes to the
Archive, which never answers: the Orchestrator's ask times out (``AskTimeout``) and the
kernel cancels the stuck handler at that same deadline (``cancel_at_deadline=True``).

The messages are defined in ``_messages``, the text work the stages do in ``_work``.
Like any application, the demo uses only kerna's public API; the agents that need
per-run settings get them through their constructor (``register(factory=...)``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter

from kerna import Agent, AgentRef, AskTimeout, DeadLetter, Kernel, RemoteError, handler

from ._inference import (
    SENTIMENT_SHARDS,
    Analyse,
    Sentiment,
    install_inference,
    is_degraded,
)
from ._messages import (
    Classified,
    DocumentSettled,
    DocumentUploaded,
    EntitiesFound,
    IndexDocument,
    Indexed,
    Orchestrated,
    PartFailed,
    ProcessDocument,
    ProcessResult,
    StagePart,
    Summarize,
    Summary,
    TextExtracted,
)
from ._work import (
    CorruptDocument,
    classify,
    entities,
    index_key,
    keywords,
    storage_tier,
    tokens,
)

__all__ = [
    "LATENCY_STAGES",
    "STAGES",
    "UPLOADED",
    "Archive",
    "Classifier",
    "Collector",
    "CorruptDocument",
    "DeadLetterWatcher",
    "DocumentAggregate",
    "DocumentUploaded",
    "EntityExtractor",
    "Indexer",
    "Orchestrator",
    "ProcessDocument",
    "ProcessResult",
    "Summarizer",
    "Tally",
    "TextExtractor",
    "error_text",
    "install",
    "shard_key",
]

log = logging.getLogger("kerna.demo")

UPLOADED = "documents.uploaded"
"""The topic the driver publishes ``DocumentUploaded`` events on."""
STAGES = ("extract", "entities", "classify")
"""The choreographed stages; a document's aggregate settles when each has reported."""
LATENCY_STAGES = (*STAGES, "aggregate", "end_to_end")
"""What the Collector times, each from the document's upload: each choreographed stage,
the aggregate (the choreographed path done) and end to end (both paths done). The
orchestrated path has no row of its own: its asks run in sequence, after the stages
started side by side, so its answer is what ends a document and its row would repeat
the end-to-end one, number for number."""
SHARDS = ("s0", "s1", "s2", "s3")
"""Keys the stage agents are sharded over (by document id)."""
COLLECTOR = "Collector"


# -- agents ------------------------------------------------------------------------------


class _Stage(Agent):
    """Shared plumbing of the choreographed stages: send a part to the doc's aggregate."""

    async def contribute(self, part: StagePart) -> None:
        await self.ref(DocumentAggregate, str(part.doc_id)).tell(part)


class TextExtractor(_Stage):
    """Strips the markup, counts the words and fingerprints the text."""

    @handler
    async def on_upload(self, msg: DocumentUploaded) -> None:
        words = tokens(msg.body)
        text = " ".join(words).lower().encode("utf-8", "replace")
        digest = hashlib.blake2b(text, digest_size=8).hexdigest()
        await self.contribute(
            TextExtracted(
                doc_id=msg.doc_id,
                uploaded_at=msg.uploaded_at,
                done_at=time.perf_counter(),
                words=len(words),
                digest=digest,
            )
        )


class EntityExtractor(_Stage):
    """Finds people, emails, amounts and dates with one regular expression."""

    @handler
    async def on_upload(self, msg: DocumentUploaded) -> None:
        await self.contribute(
            EntitiesFound(
                doc_id=msg.doc_id,
                uploaded_at=msg.uploaded_at,
                done_at=time.perf_counter(),
                entities=entities(msg.body),
            )
        )


class Classifier(_Stage):
    """Labels the document by keyword counts; raises ``CorruptDocument`` on bad input.

    Nobody asked, so nobody gets the error: the kernel counts it as failed and publishes
    a ``DeadLetter`` on ``Kernel.DEAD_LETTERS``, which the DeadLetterWatcher turns into
    a ``PartFailed`` for the document's aggregate.
    """

    @handler
    async def on_upload(self, msg: DocumentUploaded) -> None:
        label = classify(msg.doc_id, msg.body)
        await self.contribute(
            Classified(
                doc_id=msg.doc_id,
                uploaded_at=msg.uploaded_at,
                done_at=time.perf_counter(),
                label=label,
            )
        )


class DocumentAggregate(Agent):
    """One per document (key = doc id): joins the stages' parts, then goes away.

    When every stage has reported (a result or a failure), it tells the Collector and
    asks the kernel to deactivate it once its mailbox is empty.
    """

    def __init__(self) -> None:
        self.latencies: dict[str, float] = {}
        self.errors: dict[str, str] = {}

    # The concrete parts, not their base class: a handler for a base class takes its
    # subclasses in process, but only the classes it names are known on the wire.
    @handler
    async def on_part(self, msg: TextExtracted | EntitiesFound | Classified | PartFailed) -> None:
        if isinstance(msg, PartFailed):
            self.errors[msg.failed_stage] = msg.error
        else:
            self.latencies[msg.stage] = msg.done_at - msg.uploaded_at
        if len(self.latencies) + len(self.errors) < len(STAGES):
            return
        now = time.perf_counter()
        await self.ref(COLLECTOR, "default").tell(
            DocumentSettled(
                doc_id=msg.doc_id,
                uploaded_at=msg.uploaded_at,
                settled_at=now,
                latencies=tuple(self.latencies.items()),
                errors=tuple(f"{stage}: {err}" for stage, err in self.errors.items()),
            )
        )
        self.deactivate_on_idle()


_STAGE_OF_TYPE = {
    "TextExtractor": "extract",
    "EntityExtractor": "entities",
    "Classifier": "classify",
}


class DeadLetterWatcher(Agent):
    """Subscribed to ``Kernel.DEAD_LETTERS``: a failed stage still settles its document."""

    @handler
    async def on_dead_letter(self, msg: DeadLetter) -> None:
        original = msg.message
        if not isinstance(original, DocumentUploaded):
            log.warning("dead letter for %s (%s): %s", msg.target, msg.reason, msg.error)
            return
        agent_type = msg.target.partition("/")[0]
        await self.ref(DocumentAggregate, str(original.doc_id)).tell(
            PartFailed(
                doc_id=original.doc_id,
                uploaded_at=original.uploaded_at,
                done_at=time.perf_counter(),
                failed_stage=_STAGE_OF_TYPE.get(agent_type, agent_type),
                error=msg.error or f"DeadLetter: {msg.reason}",
            )
        )


class Summarizer(Agent):
    """Answers ``Summarize`` with the top keywords and the storage tier of a document."""

    @handler
    async def summarize(self, msg: Summarize) -> Summary:
        return Summary(
            doc_id=msg.doc_id,
            keywords=keywords(msg.doc_id, msg.body),
            tier=storage_tier(msg.body),
        )


class Indexer(Agent):
    """Answers ``IndexDocument`` with an index key; sharded, for hot documents."""

    @handler
    async def index(self, msg: IndexDocument) -> Indexed:
        return Indexed(doc_id=msg.doc_id, index_key=index_key(msg.keywords))


class Archive(Agent):
    """Indexes cold documents, one activation per document, and is far too slow.

    Registered with ``cancel_at_deadline=True``: the kernel cancels the handler when its
    message's deadline passes, and the asker gets ``AskTimeout``. One agent per document,
    so a stuck write delays nobody else (a sharded agent would hold up every document
    queued behind it).
    """

    @handler
    async def index(self, msg: IndexDocument) -> Indexed:
        self.deactivate_on_idle()  # single use, whether it finishes or is cancelled
        await asyncio.Event().wait()  # the tape robot never comes back
        return Indexed(doc_id=msg.doc_id, index_key=index_key(msg.keywords))


class Orchestrator(Agent):
    """Drives the second path: asks the Summarizer, then the Indexer, each with a timeout.

    A step's failure (``RemoteError``) or silence (``AskTimeout``) becomes the result's
    ``outcome``; either way the Collector hears how it ended. Registered with
    ``factory=lambda: Orchestrator(step_timeout)``: the run's step timeout is injected.
    """

    def __init__(self, step_timeout: float, sentiment: bool = False) -> None:
        self.step_timeout = step_timeout  # seconds each step may take
        self.sentiment = sentiment  # ask the best-effort Sentiment agents after summarize

    async def on_start(self) -> None:
        self.summarizers = [self.ref(Summarizer, key) for key in SHARDS]
        self.indexers = [self.ref(Indexer, key) for key in SHARDS]
        if self.sentiment:  # (the cluster demo's nodes do not register Sentiment)
            self.moods = [self.ref(Sentiment, key) for key in SENTIMENT_SHARDS]
        self.collector = self.ref(COLLECTOR, "default")

    @handler
    async def process(self, msg: ProcessDocument) -> ProcessResult:
        shard = msg.doc_id % len(SHARDS)
        step, target = "summarize", self.summarizers[shard]
        try:
            summary: Summary = await target.ask(
                Summarize(doc_id=msg.doc_id, body=msg.body), timeout=self.step_timeout
            )
            if self.sentiment:
                step, target = "sentiment", self.moods[msg.doc_id % len(self.moods)]
                # Best effort: the policy's fallback answers when this shard is down.
                await target.ask(
                    Analyse(doc_id=msg.doc_id, text=" ".join(summary.keywords)),
                    timeout=self.step_timeout,
                )
            step = "index"
            target = self.indexers[shard] if summary.tier == "hot" else self.archive(msg)
            await target.ask(
                IndexDocument(doc_id=msg.doc_id, keywords=summary.keywords, tier=summary.tier),
                timeout=self.step_timeout,
            )
        except AskTimeout:
            # The step timeout as given: the error's own text states the time that was
            # left when the kernel read the clock again (0.499999s for 0.5).
            error = f"AskTimeout: no reply from {target.id} in {self.step_timeout:g}s"
            result = ProcessResult(msg.doc_id, "timeout", step, error)
        except RemoteError as exc:
            result = ProcessResult(msg.doc_id, "error", step, error_text(exc))
        else:
            result = ProcessResult(msg.doc_id, "ok", keywords=summary.keywords)
        await self.collector.tell(
            Orchestrated(
                doc_id=msg.doc_id,
                uploaded_at=msg.uploaded_at,
                finished_at=time.perf_counter(),
                outcome=result.outcome,
                step=result.step,
                error=result.error,
                degraded=self.sentiment and is_degraded(self),
            )
        )
        return result

    def archive(self, msg: ProcessDocument) -> AgentRef:
        return self.ref(Archive, str(msg.doc_id))


class Tally:
    """What the Collector learns; the driver reads it (one writer, one loop).

    A document is *accounted for* once both of its outcomes arrived: the aggregate's
    ``DocumentSettled`` and the orchestrated path's ``Orchestrated``. It is *completed*
    when both succeeded, *failed* otherwise. ``done`` is set when every document is
    accounted for: the driver waits on it instead of polling.
    """

    def __init__(self, docs: int) -> None:
        self.docs = docs
        self.completed = 0
        self.failed = 0
        self.aggregated = 0
        self.choreography_failed = 0
        self.degraded = 0  # documents whose orchestrated path used a fallback's answer
        self.outcomes: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = {stage: [] for stage in LATENCY_STAGES}
        self.errors: dict[str, str] = {}
        self.done = asyncio.Event()
        self._marks: dict[int, asyncio.Event] = {}
        self._first: dict[int, tuple[str, bool, float]] = {}  # doc -> (path, ok, finished)

    @property
    def accounted(self) -> int:
        return self.completed + self.failed

    def outcome(
        self, doc_id: int, path: str, ok: bool, uploaded_at: float, finished_at: float
    ) -> None:
        """Record how one ``path`` ended for a document; the second path accounts for it."""
        first = self._first.get(doc_id)
        if first is None:
            self._first[doc_id] = (path, ok, finished_at)
            return
        if first[0] == path:  # cannot happen unless an agent reports twice: keep the first
            log.warning("document %d: second %s outcome ignored", doc_id, path)
            return
        del self._first[doc_id]
        if ok and first[1]:
            self.completed += 1
            self.latencies["end_to_end"].append(max(finished_at, first[2]) - uploaded_at)
        else:
            self.failed += 1
        if self.accounted == self.docs:
            self.done.set()
        mark = self._marks.get(self.accounted)
        if mark is not None:
            mark.set()

    def reached(self, accounted: int) -> asyncio.Event:
        """An event set once ``accounted`` documents are accounted for."""
        mark = self._marks.setdefault(accounted, asyncio.Event())
        if self.accounted >= accounted:
            mark.set()
        return mark

    def error(self, kind: str, text: str) -> None:
        """Keep the first failure of each kind, as an example for the summary."""
        self.errors.setdefault(kind, text)


class Collector(Agent):
    """Metrics sink: records latencies and outcomes into the run's ``Tally``.

    Registered with ``factory=lambda: Collector(tally)``: the run's tally is injected.
    """

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    @handler
    async def on_settled(self, msg: DocumentSettled) -> None:
        tally = self.tally
        for stage, seconds in msg.latencies:
            tally.latencies[stage].append(seconds)
        ok = not msg.errors
        if ok:
            tally.aggregated += 1
            tally.latencies["aggregate"].append(msg.settled_at - msg.uploaded_at)
        else:
            tally.choreography_failed += 1
            tally.error("choreography", f"doc {msg.doc_id}: choreography, {'; '.join(msg.errors)}")
        tally.outcome(msg.doc_id, "choreography", ok, msg.uploaded_at, msg.settled_at)

    @handler
    async def on_orchestrated(self, msg: Orchestrated) -> None:
        tally = self.tally
        tally.outcomes[msg.outcome] += 1
        tally.degraded += msg.degraded
        ok = msg.outcome == "ok"
        if not ok:
            tally.error(msg.outcome, f"doc {msg.doc_id}: orchestration, {msg.step}: {msg.error}")
        tally.outcome(msg.doc_id, "orchestration", ok, msg.uploaded_at, msg.finished_at)


def error_text(exc: BaseException) -> str:
    """``"TypeName: text"``, as the kernel describes a failure in a ``DeadLetter``: a
    ``RemoteError`` by the type its handler raised, without its module path."""
    if isinstance(exc, RemoteError):
        return f"{exc.type_name.rpartition('.')[2]}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def install(kernel: Kernel, tally: Tally, *, step_timeout: float, seed: int = 0) -> AgentRef:
    """Register the pipeline's agents and subscriptions; returns the Collector's ref.

    The kernel must run ``sentiment_resilience()`` among its middleware: the
    Orchestrator asks the Sentiment shards (``install_inference``; ``seed`` picks the
    one that is down)."""
    for stage in (TextExtractor, EntityExtractor, Classifier):
        kernel.register(stage)
        kernel.subscribe(UPLOADED, stage, key=shard_key)
    kernel.register(DocumentAggregate, mailbox_size=len(STAGES) + 1)
    kernel.register(Collector, name=COLLECTOR, factory=lambda: Collector(tally))
    # Dead letters are offered without waiting: give the watcher room for bursts.
    kernel.register(DeadLetterWatcher, mailbox_size=100_000)
    kernel.subscribe(kernel.DEAD_LETTERS, DeadLetterWatcher)
    kernel.register(Summarizer)
    kernel.register(Indexer)
    kernel.register(Archive, cancel_at_deadline=True)
    install_inference(kernel, seed)
    kernel.register(Orchestrator, factory=lambda: Orchestrator(step_timeout, sentiment=True))
    return kernel.ref(COLLECTOR, "default")


def shard_key(msg: DocumentUploaded) -> str:
    """The stage shard of a document (``s<doc_id mod 4>``)."""
    return SHARDS[msg.doc_id % len(SHARDS)]
