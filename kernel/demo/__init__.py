"""``kerna demo``: a document pipeline of agents, run in process, and its numbers.

A program written against kerna's public API only, as an application would be:
choreographed stages react to an upload event while an orchestrator asks a summarizer
and an indexer in sequence, with a few documents corrupted or stalled on purpose.
``kerna demo`` (or ``make demo``) runs it from the command line; from Python::

    from kerna.demo import run_demo

    report = run_demo(500, seed=1)
    assert report.completed + report.failed == 500
"""

from ._corpus import fault_plan, make_corpus
from ._driver import LOOPS, DemoReport, StageLatency, demo, loop_factory, loop_name, run_demo
from ._report import format_plain, print_rich, summary_rows

__all__ = [
    "LOOPS",
    "DemoReport",
    "StageLatency",
    "demo",
    "fault_plan",
    "format_plain",
    "loop_factory",
    "loop_name",
    "make_corpus",
    "print_rich",
    "run_demo",
    "summary_rows",
]
