"""``kerna demo``: drive the document pipeline of ``_agents`` and measure it.

``run_demo(docs)`` generates a synthetic corpus from a seed, starts a ``Kernel``, and
lets a fixed set of driver workers feed it: each worker publishes a document's
``DocumentUploaded`` event (``await publish`` waits while the stages' mailboxes are full:
that is the backpressure) and then asks the Orchestrator to process the same document,
while the choreographed stages work on it concurrently. The Collector sets an event when
every document is accounted for; the driver waits on that event (no polling), reads the
kernel's counters and returns a ``DemoReport``.

Every count is deterministic: which documents fail, and how, follows from the seed
(``fault_plan``), so a test can predict the failure counts exactly (the corpus and its
faults are generated in ``_corpus``). By default (``loop="virtual"``) the run's loop
keeps virtual time (``kerna.testing.VirtualClock``): what the demo only simulates, the
model's cost, the ``@batched`` window, the stalled steps' timeouts, takes no real time
and happens in the same order on every run, so how many asks one model call carries
(what batching saves) is the same every run too. The kernel's work is real: the wall
time, the rate and the latencies are measured on the real clock (``perf_counter``).
On a real-time loop (``"auto"``, ``"asyncio"``, ``"uvloop"``) the model's calls are
slept for real, and how many asks share one call depends on timing, as in production.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from kerna import AgentRef, ConfigError, KernaError, Kernel

from ._agents import LATENCY_STAGES, UPLOADED, Tally, error_text, install
from ._corpus import fault_plan, make_corpus
from ._inference import InferenceCounts, inference_counts, sentiment_resilience
from ._messages import DocumentUploaded, Orchestrated, ProcessDocument

__all__ = [
    "LOOPS",
    "DemoReport",
    "StageLatency",
    "demo",
    "loop_factory",
    "loop_name",
    "run_demo",
]

log = logging.getLogger("kerna.demo")

LOOPS = ("virtual", "auto", "asyncio", "uvloop")
"""``loop_factory``'s choices: ``"virtual"`` is asyncio's loop on a virtual clock."""
ProgressFn = Callable[[int, int], None]
"""Called as ``progress(accounted, docs)`` a few times a second and once at the end."""


class StageLatency(msgspec.Struct, frozen=True):
    """Latency percentiles of one stage, in milliseconds since the document's upload."""

    stage: str
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class DemoReport(msgspec.Struct, frozen=True):
    """The numbers of one demo run (``kerna demo`` formats them).

    Attributes:
        docs: documents uploaded.
        completed: documents whose two paths both succeeded.
        failed: documents where either path failed (``completed + failed + lost == docs``).
        lost: documents never accounted for before ``settle_timeout`` (0 unless broken).
        aggregated / choreography_failed: how the choreographed path settled.
        orchestrated / orchestration_errors / orchestration_timeouts: how the
            orchestrated path answered (ok, ``RemoteError``, ``AskTimeout``).
        injected_corrupt / injected_stalls: faults the corpus carries (``fault_plan``).
        messages: messages handled (sum of ``TypeStats.handled``), ``msgs_per_s`` per
            second of ``wall_s`` (first upload to last document accounted for).
        dead_letters: ``DeadLetter`` records the dead-letter watcher received (a failed
            tell is one); handler_failures, late_replies: kernel counters.
        latencies: percentiles per ``LATENCY_STAGES`` entry (the choreographed stages,
            ``aggregate``, ``end_to_end``).
        errors: the first failure of each kind, as ``"doc N: <path>, <step>:
            <ErrorType>: <text>"`` (the error's class name, without its module).
        nodes: 1 for the embedded demo; the ``kerna node`` processes of
            ``kerna demo --nodes N`` (``cluster_demo``).
        killed: the node killed with SIGKILL midway (cluster demo), else None.
        failover_s: seconds from that kill to the first reply a survivor served for an
            agent the killed node hosted (cluster demo), else None.
        degraded: documents whose orchestrated path took the sentiment fallback's
            answer (the keyword filter) instead of the model's.
        inference: the model's, cache's, batcher's and breakers' counters
            (``InferenceCounts``; the embedded demo), else None.
    """

    docs: int
    seed: int
    loop: str
    wall_s: float
    messages: int
    msgs_per_s: float
    completed: int
    failed: int
    lost: int
    aggregated: int
    choreography_failed: int
    orchestrated: int
    orchestration_errors: int
    orchestration_timeouts: int
    injected_corrupt: int
    injected_stalls: int
    dead_letters: int
    handler_failures: int
    late_replies: int
    latencies: tuple[StageLatency, ...]
    errors: tuple[str, ...]
    nodes: int = 1
    killed: str | None = None
    failover_s: float | None = None
    degraded: int = 0
    inference: InferenceCounts | None = None


# -- the driver ------------------------------------------------------------------------


async def demo(
    docs: int,
    *,
    seed: int = 0,
    concurrency: int = 64,
    step_timeout: float = 0.5,
    corrupt_rate: float = 0.005,
    stall_rate: float = 0.001,
    settle_timeout: float = 60.0,
    progress: ProgressFn | None = None,
) -> DemoReport:
    """Run the demo in the running event loop (``run_demo`` picks and runs the loop).

    Args:
        docs: number of documents.
        seed: seed of the corpus and of the fault plan.
        concurrency: driver workers, each with one document in flight on the
            orchestrated path at a time.
        step_timeout: seconds each orchestrated step may take.
        corrupt_rate: fraction of documents that are corrupted.
        stall_rate: fraction of the documents reaching the index step (the intact
            ones) whose indexing stalls; any two rates between 0 and 1 are valid.
        settle_timeout: give up waiting for stragglers after this many seconds once
            every document was sent (they are reported as ``lost``).
        progress: optional ``progress(accounted, docs)`` callback.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.
    """
    _check_args(docs, seed, concurrency, step_timeout, corrupt_rate, stall_rate, settle_timeout)
    corpus = make_corpus(docs, seed, corrupt_rate, stall_rate)
    faults = Counter(fault_plan(docs, seed, corrupt_rate, stall_rate))
    tally = Tally(docs)
    # The corrupted documents fail their stages on purpose: their failures are counted
    # and reported below, not logged at WARNING as an unexpected failure would be.
    resilience = sentiment_resilience()
    async with Kernel(failure_log_level="DEBUG", middleware=[resilience]) as kernel:
        collector = install(kernel, tally, step_timeout=step_timeout, seed=seed)
        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            ticker = tg.create_task(_tick(tally, progress)) if progress else None
            shared = iter(corpus)  # each worker takes the next document: one consumer each
            async with asyncio.TaskGroup() as workers:
                for n in range(min(concurrency, docs)):
                    orchestrator = kernel.ref("Orchestrator", f"w{n}")
                    workers.create_task(
                        _worker(kernel, orchestrator, collector, shared, 2 * step_timeout + 5)
                    )
            try:
                async with asyncio.timeout(settle_timeout):
                    await tally.done.wait()
            except TimeoutError:
                log.error(
                    "%d of %d documents not accounted for after %gs",
                    docs - tally.accounted,
                    docs,
                    settle_timeout,
                )
            wall = time.perf_counter() - started
            if ticker is not None:
                ticker.cancel()
        stats = kernel.stats()
        inference = inference_counts(kernel, resilience)
    if progress is not None:
        progress(tally.accounted, docs)
    types = stats.types.values()
    messages = sum(t.handled for t in types)
    return DemoReport(
        **tally_fields(tally, docs, seed, wall, messages, faults),
        dead_letters=stats.types["DeadLetterWatcher"].handled,
        handler_failures=sum(t.failed for t in types),
        late_replies=sum(t.late_replies for t in types),
        degraded=tally.degraded,
        inference=inference,
    )


def tally_fields(
    tally: Tally, docs: int, seed: int, wall: float, messages: int, faults: dict[str, int]
) -> dict[str, Any]:
    """The ``DemoReport`` fields that come from the Collector's tally and the run (the
    embedded and the cluster demo report them alike)."""
    return {
        "docs": docs,
        "seed": seed,
        "loop": loop_name(asyncio.get_running_loop()),
        "wall_s": wall,
        "messages": messages,
        "msgs_per_s": messages / wall if wall > 0 else 0.0,
        "completed": tally.completed,
        "failed": tally.failed,
        "lost": docs - tally.accounted,
        "aggregated": tally.aggregated,
        "choreography_failed": tally.choreography_failed,
        "orchestrated": tally.outcomes["ok"],
        "orchestration_errors": tally.outcomes["error"],
        "orchestration_timeouts": tally.outcomes["timeout"],
        "injected_corrupt": faults["corrupt"],
        "injected_stalls": faults["stall"],
        "latencies": tuple(_percentiles(stage, tally.latencies[stage]) for stage in LATENCY_STAGES),
        "errors": tuple(tally.errors.values()),
    }


async def _worker(
    kernel: Kernel,
    orchestrator: AgentRef,
    collector: AgentRef,
    corpus: Iterator[tuple[int, str]],
    ask_timeout: float,
) -> None:
    """Upload documents one at a time: publish the event, then ask the Orchestrator."""
    for doc_id, body in corpus:
        uploaded_at = time.perf_counter()
        await kernel.publish(
            UPLOADED, DocumentUploaded(doc_id=doc_id, body=body, uploaded_at=uploaded_at)
        )
        try:
            await orchestrator.ask(
                ProcessDocument(doc_id=doc_id, body=body, uploaded_at=uploaded_at),
                timeout=ask_timeout,
            )
        except KernaError as exc:
            # The Orchestrator itself failed (it reports its steps' failures itself):
            # still account for the document, so the run ends.
            log.warning("orchestrator failed on document %d: %r", doc_id, exc)
            await collector.tell(
                Orchestrated(
                    doc_id=doc_id,
                    uploaded_at=uploaded_at,
                    finished_at=time.perf_counter(),
                    outcome="error",
                    step="process",
                    error=error_text(exc),
                )
            )


async def _tick(tally: Tally, progress: ProgressFn, interval: float = 0.1) -> None:
    """Refresh the progress display on a timer (display only: completion is an event)."""
    while True:
        progress(tally.accounted, tally.docs)
        await asyncio.sleep(interval)


def _percentiles(stage: str, samples: list[float]) -> StageLatency:
    """Nearest-rank percentiles, so ``p50 <= p95 <= p99 <= max`` always holds."""
    if not samples:
        return StageLatency(stage, 0, 0.0, 0.0, 0.0, 0.0)
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000.0

    return StageLatency(stage, n, rank(0.50), rank(0.95), rank(0.99), ordered[-1] * 1000.0)


def _check_args(
    docs: int,
    seed: int,
    concurrency: int,
    step_timeout: float,
    corrupt_rate: float,
    stall_rate: float,
    settle_timeout: float,
) -> None:
    """Each argument on its own (any two rates make a plan: see ``fault_plan``)."""
    for name, value in (("docs", docs), ("seed", seed), ("concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if name != "seed" and value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for name, seconds in (("step_timeout", step_timeout), ("settle_timeout", settle_timeout)):
        if not _is_number(seconds):
            raise TypeError(f"{name} must be a number of seconds, got {type(seconds).__name__}")
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    for name, rate in (("corrupt_rate", corrupt_rate), ("stall_rate", stall_rate)):
        if not _is_number(rate):
            raise TypeError(f"{name} must be a number, got {type(rate).__name__}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {rate!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- event loops -----------------------------------------------------------------------


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``choice`` (None: asyncio's default loop).

    ``"virtual"``: a selector loop on a new ``kerna.testing.VirtualClock`` (the
    simulated waits take no real time, and every count of the run is deterministic);
    ``"auto"`` takes uvloop when it is importable, else asyncio (real time).

    Raises:
        ConfigError: unknown choice, or ``"uvloop"`` without uvloop installed.
    """
    if choice not in LOOPS:
        raise ConfigError(f"loop must be one of {', '.join(LOOPS)}; got {choice!r}")
    if choice == "asyncio":
        return None
    if choice == "virtual":
        from kerna.testing import VirtualClock

        return VirtualClock().new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("uvloop is not installed: pip install 'kerna[uvloop]'") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop <version>"``, ``"asyncio"`` or ``"asyncio, virtual clock"``: what the
    summary says it ran on."""
    if type(loop).__module__.startswith("kerna.testing"):
        return "asyncio, virtual clock"
    if type(loop).__module__.startswith("uvloop"):
        from importlib.metadata import version

        return f"uvloop {version('uvloop')}"
    return "asyncio"


def run_demo(
    docs: int,
    seed: int = 0,
    *,
    loop: str = "virtual",
    concurrency: int = 64,
    step_timeout: float = 0.5,
    corrupt_rate: float = 0.005,
    stall_rate: float = 0.001,
    settle_timeout: float = 60.0,
    progress: ProgressFn | None = None,
) -> DemoReport:
    """Run the document pipeline demo on a fresh event loop and return its numbers.

    Example::

        report = run_demo(500, seed=1)
        assert report.completed + report.failed == 500

    See ``demo`` for the arguments; ``loop`` is ``"virtual"`` (asyncio on a virtual
    clock: every count deterministic, the module docstring says why), ``"auto"``,
    ``"asyncio"`` or ``"uvloop"`` (real time: how many asks share a model call varies).

    Raises:
        ConfigError: ``loop`` is unknown or not installed.
        TypeError: another argument has the wrong type.
        ValueError: another argument is out of range.
        RuntimeError: called from a running event loop (``await demo(...)`` there).
    """
    factory = loop_factory(loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(
            demo(
                docs,
                seed=seed,
                concurrency=concurrency,
                step_timeout=step_timeout,
                corrupt_rate=corrupt_rate,
                stall_rate=stall_rate,
                settle_timeout=settle_timeout,
                progress=progress,
            )
        )
