"""The agent module of ``kerna demo --nodes N``'s node processes (``[node] agents``).

Each ``kerna node`` of the demo loads this module: ``setup(kernel)`` registers the
document pipeline of ``_agents`` (everything but the Collector, which lives in the
driver's process with the run's tally) plus ``Ingest``, which turns the driver's
``DocumentUploaded`` tell into a publish on the node that receives it. Topics are
per node: the choreographed stages are subscribed on every node (``placement="local"``:
one activation per node, stateless workers), so an upload is worked on where its
``Ingest`` shard lives, and each stage's part goes to the document's aggregate
wherever the cluster places it. The per-key agents (aggregates, orchestrators,
summarizers, indexers, archives) are volatile and ``placement="hash"``: no store write
per activation; the demo waits until every node agrees on the members before it sends
to a new view, so no two nodes ever place one of them differently.

``$KERNA_DEMO_STEP_TIMEOUT`` carries the run's step timeout to the Orchestrators.
"""

from __future__ import annotations

import os

from kerna import Agent, Kernel, handler

from ._agents import (
    UPLOADED,
    Archive,
    Classifier,
    DeadLetterWatcher,
    DocumentAggregate,
    EntityExtractor,
    Indexer,
    Orchestrator,
    Summarizer,
    TextExtractor,
    shard_key,
)
from ._messages import DocumentUploaded

__all__ = ["STEP_TIMEOUT_ENV", "Ingest", "setup"]

STEP_TIMEOUT_ENV = "KERNA_DEMO_STEP_TIMEOUT"


class Ingest(Agent):
    """Publishes the uploads the driver tells it on this node's ``UPLOADED`` topic
    (sharded like the stages: ``Ingest/s<k>``)."""

    @handler
    async def on_upload(self, msg: DocumentUploaded) -> None:
        await self.publish(UPLOADED, msg)


def setup(kernel: Kernel) -> None:
    """Register the pipeline's agents and this node's subscriptions."""
    step_timeout = float(os.environ.get(STEP_TIMEOUT_ENV, "0.5"))
    kernel.register(Ingest, placement="hash", mailbox_size=100_000)
    for stage in (TextExtractor, EntityExtractor, Classifier):
        kernel.register(stage, placement="local")
        kernel.subscribe(UPLOADED, stage, key=shard_key)
    kernel.register(DocumentAggregate, placement="hash", mailbox_size=16)
    kernel.register(DeadLetterWatcher, placement="local", mailbox_size=100_000)
    kernel.subscribe(kernel.DEAD_LETTERS, DeadLetterWatcher)
    kernel.register(Summarizer, placement="hash")
    kernel.register(Indexer, placement="hash")
    kernel.register(Archive, placement="hash", cancel_at_deadline=True)
    kernel.register(Orchestrator, placement="hash", factory=lambda: Orchestrator(step_timeout))
