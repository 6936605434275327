"""Message ids (and the correlation and causation ids copied from them) are unique across
processes and restarts: what leaves the process or is persisted never repeats."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import textwrap
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest

from kerna import Agent, Kernel, Message, handler
from kerna import _ids as ids_module

pytestmark = pytest.mark.anyio

MAX_ID = 2**63 - 1  # a signed 64-bit int: every column type and encoding takes it


async def run_python(script: str, *args: str) -> Any:
    """Run ``script`` in a fresh interpreter; return the JSON it prints last.

    The working directory is ``/``, so a ``sqlite:///`` URL with an absolute path names
    the same file whether the three slashes mean an absolute path or (SQLAlchemy's
    convention) one relative to the working directory.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(script), *args, stdout=PIPE, stderr=PIPE, cwd="/"
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (out + err).decode()
    return json.loads(out.decode().strip().splitlines()[-1])


CONVERSATIONS = """
    import asyncio, json
    from kerna import Agent, Kernel, Message, handler

    class Probe(Message):
        pass

    class Ids(Agent):
        @handler
        async def probe(self, msg: Probe) -> list[int]:
            ctx = self.context
            return [ctx.message_id, ctx.correlation_id]

    async def main() -> None:
        async with Kernel() as kernel:
            kernel.register(Ids)
            ref = kernel.ref(Ids, "a")
            print(json.dumps([await ref.ask(Probe()) for _ in range(5)]))

    asyncio.run(main())
"""


async def test_two_processes_produce_different_ids() -> None:
    first, second = await asyncio.gather(run_python(CONVERSATIONS), run_python(CONVERSATIONS))
    ids = [set(itertools.chain.from_iterable(run)) for run in (first, second)]
    assert len(ids[0]) == len(ids[1]) == 5  # a root ask's correlation id is its own id
    assert not ids[0] & ids[1], (first, second)
    assert all(0 < i <= MAX_ID for i in ids[0] | ids[1])


EVENT_SOURCED = """
    import asyncio, json, sys
    import msgspec
    from kerna import Agent, Kernel, Message, handler
    from kerna.state import EventLog, EventSourcing

    class Total(msgspec.Struct, frozen=True):
        n: int = 0

    class Added(Message, tag="test_ids.added"):
        n: int

    class Add(Message):
        n: int

    class Account(Agent, state=Total, event_sourced=True):
        @staticmethod
        def apply(state: Total, event: Added) -> Total:
            return Total(state.n + event.n)

        @handler
        async def add(self, msg: Add) -> int:
            await self.emit(Added(n=msg.n))
            return self.state.n

    async def main(url: str) -> None:
        async with Kernel(state=url) as kernel:
            kernel.register(Account)
            for _ in range(3):
                await kernel.ref(Account, "a").ask(Add(n=1))
            sourcing = EventSourcing(Total, Account.apply)
            log = EventLog(kernel.state_backend, sourcing, "Account", "a")
            records = [[r.seq, r.correlation_id, r.causation_id] async for r in log.events()]
        print(json.dumps(records))

    asyncio.run(main(sys.argv[1]))
"""


async def test_the_event_log_audit_trail_never_repeats_ids_across_restarts(
    tmp_path: Path,
) -> None:
    url = f"sqlite://{tmp_path / 'audit.db'}"
    await run_python(EVENT_SOURCED, url)  # the first run of the application
    records = await run_python(EVENT_SOURCED, url)  # restarted: three more events
    assert [seq for seq, _, _ in records] == [1, 2, 3, 4, 5, 6]
    correlations = [c for _, c, _ in records]
    causations = [c for _, _, c in records]
    # six separate asks: six conversations, each event caused by its own message
    assert len(set(correlations)) == 6, records
    assert len(set(causations)) == 6, records
    assert all(0 < i <= MAX_ID for i in correlations + causations)


class Probe(Message):
    pass


class Ids(Agent):
    @handler
    async def probe(self, msg: Probe) -> int:
        return self.context.message_id


async def test_two_kernels_in_one_process_do_not_share_ids() -> None:
    seen: list[set[int]] = []
    for _ in range(2):
        async with Kernel() as kernel:
            kernel.register(Ids)
            ref = kernel.ref(Ids, "a")
            seen.append({await ref.ask(Probe()) for _ in range(50)})
    assert len(seen[0]) == len(seen[1]) == 50
    assert not seen[0] & seen[1]


def test_ids_stay_unique_and_positive_when_the_counter_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a 2-bit counter: a fresh random prefix every 3 ids (100 prefixes: a repeat, 2**-17)
    monkeypatch.setattr(ids_module, "_COUNTER_BITS", 2)
    ids = list(itertools.islice(ids_module.message_ids(), 300))
    assert len(set(ids)) == len(ids)
    assert all(i > 0 for i in ids)
