"""One process of a cross-process benchmark: a server, or a caller that measures.

``python -m benchmarks._net_proc serve KIND LOOP ARG`` runs a server until it is
terminated (``net_bench`` stops it by PID) and prints ``ready ADDRESS`` once it
listens. ``python -m benchmarks._net_proc call KIND LOOP ADDRESS WORKLOAD SIZE
[LISTEN]`` runs one workload (``seq`` N asks, ``conc`` 64 callers for SIZE seconds,
``w6`` N tells) against the server at ADDRESS and prints its metrics as JSON. kerna's
caller is a node too: ``LISTEN`` is its own transport URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any, cast

from ._common import LoopName, run_async
from ._net_work import Caller, concurrent, oneway, sequential

__all__ = ["CALLERS", "main"]

CALLERS = 64
"""W5's concurrent callers."""


def _ready(address: str) -> None:
    print(f"ready {address}", flush=True)


async def _serve(kind: str, arg: str) -> None:
    # SIGTERM (the bench stopping us by PID) ends the server through cancellation, so a
    # profile started in main() is written on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if kind in ("floor", "floor-coalesced"):
        from . import _net_floor

        await _net_floor.serve(int(arg), kind == "floor-coalesced", _ready)
    elif kind == "kerna":
        from . import _net_kerna

        await _net_kerna.serve(arg, _ready)
    elif kind == "nats":
        from . import _net_nats

        await _net_nats.serve(arg, _ready)
    elif kind == "autogen-host":
        from . import _net_autogen

        await _net_autogen.serve_host(int(arg), _ready)
    elif kind == "autogen-worker":
        from . import _net_autogen

        await _net_autogen.serve_worker(arg, _ready)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


WARM_UP = 200
"""Asks made before any timed workload (connections, handshakes, first allocations)."""


async def _measure(caller: Caller, workload: str, size: float) -> dict[str, float]:
    for i in range(WARM_UP):
        await caller.ask(i)
    if _profiler is not None:  # the caller's profile covers the workload alone
        _profiler.start()
    try:
        if workload == "seq":
            return await sequential(caller, int(size))
        if workload == "conc":
            return await concurrent(caller, CALLERS, size)
        if workload == "w6":
            return await oneway(caller, int(size))
        raise SystemExit(f"unknown workload {workload!r}")
    finally:
        if _profiler is not None:
            _profiler.stop()


async def _call(kind: str, address: str, workload: str, size: float, listen: str) -> Any:
    if kind == "kerna":
        from kerna import Kernel

        from . import _net_kerna

        async with Kernel(transport=listen) as kernel:
            return await _measure(_net_kerna.Caller(kernel, address), workload, size)
    client: Any
    if kind in ("floor", "floor-coalesced"):
        from . import _net_floor

        client = _net_floor.Client(coalesce=kind == "floor-coalesced")
    elif kind == "nats":
        from . import _net_nats

        client = _net_nats.Client()
    elif kind == "autogen":
        from . import _net_autogen

        client = _net_autogen.Client()
    else:
        raise SystemExit(f"unknown caller kind {kind!r}")
    await client.connect(address)
    try:
        return await _measure(cast(Caller, client), workload, size)
    finally:
        await client.close()


PROFILE_ENV = "KERNA_NET_PROFILE"
"""When set, the process runs under pyinstrument (a server for its whole life, a caller
during the workload only) and writes the functions by their own time to the file this
names (``net_bench`` sets it for the rows that miss a target)."""


_profiler: Any = None

PIN_ENV = "KERNA_NET_PIN"
"""When set (``net_bench --pin``), a server runs on the last CPU and a caller on the
first: every system's two processes on two cores of their own, the same placement for
all (unpinned, the scheduler sometimes puts both on one core, which makes a ping-pong
about twice as fast and the run's latencies bimodal)."""


def pin(role: str) -> None:
    """Pin this process as ``PIN_ENV`` says (``"serve"``: the last CPU, else the first)."""
    cpus = sorted(os.sched_getaffinity(0))
    if os.environ.get(PIN_ENV) and len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1] if role == "serve" else cpus[0]})


def main(argv: list[str]) -> int:
    global _profiler
    role, kind, loop = argv[0], argv[1], cast(LoopName, argv[2])
    pin(role)
    profile = os.environ.get(PROFILE_ENV)
    if profile:
        from pyinstrument import Profiler

        _profiler = Profiler(interval=0.0002, async_mode="disabled")
        if role == "serve":  # the whole serving life: its idle time shows as epoll
            _profiler.start()
    try:
        if role == "serve":
            try:
                run_async(lambda: _serve(kind, argv[3]), loop)
            except asyncio.CancelledError:
                pass  # stopped by SIGTERM: the normal end of a server
            return 0
        address, workload, size = argv[3], argv[4], float(argv[5])
        listen = argv[6] if len(argv) > 6 else ""
        result = run_async(lambda: _call(kind, address, workload, size, listen), loop)
        print(json.dumps(result), flush=True)
        return 0
    finally:
        if _profiler is not None:
            if _profiler.is_running:
                _profiler.stop()
            with open(str(profile), "w") as f:  # the functions by their own time, top down
                f.write(_profiler.output_text(unicode=False, color=False, flat=True))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
