"""``kerna demo``: a document pipeline of agents, run in process, and its numbers.

A program written against kerna's public API only, as an application would be:
choreographed stages react to an upload event while an orchestrator asks a summarizer
and an indexer in sequence, with a few documents corrupted or stalled on purpose.
``kerna demo`` (or ``make demo``) runs it from the command line; from Python::

    from kerna.demo import run_demo

    report = run_demo(500, seed=1)
    assert report.completed + report.failed == 500

``kerna demo --nodes 3`` (``run_cluster_demo``) runs the same pipeline across three
``kerna node`` processes on a throwaway etcd and kills one of them midway.
"""

from ._cluster import cluster_demo, run_cluster_demo
from ._corpus import fault_plan, make_corpus
from ._driver import LOOPS, DemoReport, StageLatency, demo, loop_factory, loop_name, run_demo
from ._report import format_plain, print_rich, summary_rows

__all__ = [
    "LOOPS",
    "DemoReport",
    "StageLatency",
    "cluster_demo",
    "demo",
    "fault_plan",
    "format_plain",
    "loop_factory",
    "loop_name",
    "make_corpus",
    "print_rich",
    "run_cluster_demo",
    "run_demo",
    "summary_rows",
]
