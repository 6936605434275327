"""Ray Serve's ``@serve.batch`` on B1's simulated model (``benchmarks/plugins_bench.py``).

The peer of kerna's ``@batched``: the same model (``FIXED`` + ``PER_ITEM`` per item,
``asyncio.sleep``), ``max_batch_size=64`` and ``batch_wait_timeout_s=0.005`` (kerna's
``max_size`` and ``max_wait``), one batch at a time (Serve's default
``max_concurrent_batches=1``, as kerna's one batch per activation), 64 concurrent
callers. Ray lives in its own venv (``make bench-plugins``: ``.venv-ray``, from
``benchmarks/requirements-ray.txt``), as its protobuf cannot share ``.venv-bench``
with autogen-core's.

``@serve.batch`` cannot run on its own in a plain asyncio program in Ray 2.60: its queue
reads ``serve.get_replica_context()`` when it is created, which raises
``RayServeException`` outside a Serve replica. So it runs in one replica (a local Ray
started with ``num_cpus=2``, no dashboard, no HTTP proxy, usage stats off), measured
two ways:

- ``in_replica``: the 64 callers are tasks in the replica's own event loop awaiting
  the decorated method, started by one handle call that returns the rate: the
  decorator alone, no RPC and no serialization per ask. The most favourable
  configuration for Ray, and the one comparable to kerna's in-process ``@batched``.
- ``via_handle``: 64 concurrent callers in the Ray driver's process ``await
  handle.remote(...)``: each ask is a Ray actor call into the replica and back, the way
  Serve is called from outside its replica.

The Ray driver is a process of its own (``python -m benchmarks._ray_serve``, started by
``RayPeer``; one line in, one JSON line out per measurement), so that Ray's threads
never run in the process that measures kerna; Ray's processes stay up (idle) between
its measurements, during kerna's too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import IO, Any

__all__ = ["RayPeer", "RayServeBatch", "unavailable"]

FIXED, PER_ITEM, CALLERS = 0.002, 0.0001, 64
_MARK = "kerna-bench "  # the driver's replies, told apart from whatever Ray prints


def unavailable() -> str | None:
    """Why Ray Serve cannot run here (None: it can)."""
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as exc:
        return (
            f"ray[serve] is not installed in this venv ({exc}); `make bench-plugins` runs"
            " this benchmark in .venv-ray, which has it"
        )
    return None if ray.__version__ else "ray has no version"


class RayServeBatch:
    """A local Ray with one Serve replica of the batched model (a context manager)."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.version = ""
        self.loop = ""
        self.startup_s = 0.0

    def __enter__(self) -> RayServeBatch:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
        import ray
        from ray import serve

        @serve.deployment(max_ongoing_requests=4 * CALLERS, ray_actor_options={"num_cpus": 0})
        class Model:
            def __init__(self) -> None:
                self.largest = 0

            @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
            async def infer(self, items: list[str]) -> list[str]:
                self.largest = max(self.largest, len(items))
                await asyncio.sleep(FIXED + PER_ITEM * len(items))
                return items

            async def __call__(self, item: str) -> str:
                result: str = await self.infer(item)
                return result

            async def in_replica(self, per_caller: int) -> tuple[float, int]:
                await self.infer("warm")
                self.largest = 0

                async def caller(c: int) -> None:
                    for i in range(per_caller):
                        await self.infer(f"{c}.{i}")

                start = time.perf_counter()
                await asyncio.gather(*(caller(c) for c in range(CALLERS)))
                return CALLERS * per_caller / (time.perf_counter() - start), self.largest

            async def loop_name(self) -> str:
                return type(asyncio.get_running_loop()).__module__.split(".")[0]

            def reset(self) -> int:
                largest, self.largest = self.largest, 0
                return largest

        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        serve.start(proxy_location="Disabled")
        self.handle = serve.run(Model.bind(), name="b1", route_prefix=None)
        self.startup_s = time.perf_counter() - started
        self.version = ray.__version__
        self.loop = self.handle.loop_name.remote().result()  # "uvloop" or "asyncio"
        return self

    def __exit__(self, *exc: object) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()

    def in_replica(self, per_caller: int) -> float:
        """Asks per second, 64 callers in the replica's event loop."""
        rate, largest = self.handle.in_replica.remote(per_caller).result()
        assert largest == CALLERS, largest  # the batches did fill
        return float(rate)

    def via_handle(self, per_caller: int) -> float:
        """Asks per second, 64 callers in this process, a handle call per ask."""

        async def run() -> float:
            handle = self.handle
            await handle.remote("warm")
            await handle.reset.remote()

            async def caller(c: int) -> None:
                for i in range(per_caller):
                    await handle.remote(f"{c}.{i}")

            start = time.perf_counter()
            await asyncio.gather(*(caller(c) for c in range(CALLERS)))
            rate = CALLERS * per_caller / (time.perf_counter() - start)
            largest = await handle.reset.remote()
            assert largest > 1, largest  # asks were batched
            return rate

        with asyncio.Runner() as runner:
            return runner.run(run())


class RayPeer:
    """``python -m benchmarks._ray_serve`` in a process of its own (a context manager):
    ``measure("in_replica", 100)`` returns asks per second."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.version = ""
        self.loop = ""  # the replica's event loop
        self.startup_s = 0.0

    def __enter__(self) -> RayPeer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._ray_serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # Ray's own logging
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        ready = self._reply()
        self.version, self.startup_s, self.loop = (
            ready["version"],
            ready["startup_s"],
            ready["loop"],
        )
        return self

    def _reply(self) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None
        assert proc.stdout is not None
        while line := proc.stdout.readline():
            if line.startswith(_MARK):  # anything else is Ray's own output
                reply: dict[str, Any] = json.loads(line[len(_MARK) :])
                return reply
        raise RuntimeError(f"the Ray driver exited ({proc.wait(30)})")

    def measure(self, how: str, per_caller: int) -> float:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{how} {per_caller}\n")
        self.proc.stdin.flush()
        return float(self._reply()["rate"])

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the driver shuts Ray down and exits
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def serve_lines(stdin: IO[str], stdout: IO[str]) -> None:
    """The Ray driver: start Ray and the replica, then one measurement per line."""
    with RayServeBatch() as ray_batch:
        ready = {
            "version": ray_batch.version,
            "startup_s": ray_batch.startup_s,
            "loop": ray_batch.loop,
        }
        print(_MARK + json.dumps(ready), file=stdout, flush=True)
        for line in stdin:
            how, per_caller = line.split()
            rate = (
                ray_batch.in_replica(int(per_caller))
                if how == "in_replica"
                else ray_batch.via_handle(int(per_caller))
            )
            print(_MARK + json.dumps({"rate": rate}), file=stdout, flush=True)


if __name__ == "__main__":
    serve_lines(sys.stdin, sys.stdout)
