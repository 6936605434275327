"""``kerna demo``: a document pipeline of agents, run in process, and its numbers.

A program written against kerna's public API only, as an application would be:
choreographed stages react to an upload event while an orchestrator asks a summarizer
and an indexer in sequence, with a few documents corrupted or stalled on purpose.
``kerna demo`` (or ``make demo``) runs it from the command line; from Python::

    from kerna.demo import run_demo

    report = run_demo(500, seed=1)
    assert report.completed + report.failed == 500

Its Orchestrator also asks a best-effort sentiment model, behind ``@cached``,
``@batched`` and a circuit breaker with a keyword-filter fallback (``_inference``): the
summary counts the model calls the cache and the batcher saved, the breaker openings
and the degraded results.

``kerna demo --nodes 3`` (``run_cluster_demo``) runs the same pipeline across three
``kerna node`` processes on a throwaway etcd and kills one of them midway.
"""

from ._cluster import cluster_demo, run_cluster_demo
from ._corpus import fault_plan, make_corpus
from ._driver import LOOPS, DemoReport, StageLatency, demo, loop_factory, loop_name, run_demo
from ._inference import (
    BREAKER_FAILURES,
    SENTIMENT_SHARDS,
    InferenceCounts,
    down_shard,
    phrase,
)
from ._report import format_plain, print_rich, summary_rows
from ._work import keywords

__all__ = [
    "BREAKER_FAILURES",
    "LOOPS",
    "SENTIMENT_SHARDS",
    "DemoReport",
    "InferenceCounts",
    "StageLatency",
    "cluster_demo",
    "demo",
    "down_shard",
    "fault_plan",
    "format_plain",
    "keywords",
    "loop_factory",
    "loop_name",
    "make_corpus",
    "phrase",
    "print_rich",
    "run_cluster_demo",
    "run_demo",
    "summary_rows",
]
