"""State benchmarks, side by side with their floors, in one run.

``.venv-bench/bin/python -m benchmarks.state_bench`` starts its own etcd member (data
on /dev/shm, free ports; stopped by PID at the end) and runs, interleaved:

1. ``self.state`` vs ``d[k]``, read inside one handler;
2. etcd writes: kerna's ``save`` (sequential latency, 32 writers' throughput) vs the
   same transaction through aetcd's gRPC stub, and through ``aetcd.Client``;
3. propagation from a save on kernel A to kernel B's replica vs a raw watch;
4. sqlite:// writes vs raw sqlite3 with the same durability settings;
5. recovery: activating an event-sourced agent with 100,000 events, with and
   without snapshots, on etcd, sqlite and memory, vs a raw paged read + decode.

It prints the tables and writes benchmarks/RESULTS-state.md and, beside it,
benchmarks/results-state.json: every run's value of every row, the environment and the
targets, from which ``--render FILE`` re-renders the report (so every ratio can be
re-derived from the committed data). Options: ``--runs N``
(default 5), ``--noisy-runs N`` (9: 32-writer throughput and propagation, whose
figures move most between runs), ``--recovery-runs N`` (3), ``--scale F`` (sizes
times F, e.g. 0.05 for a smoke run; such a run does not write RESULTS-state.md unless
``--write``), ``--no-profile`` (skip profiling the misses), ``--only recovery`` (run
only the recovery workload and print its rows and ratios; writes nothing).
"""

from __future__ import annotations

import argparse
import dis
import inspect
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kerna import Agent
from kerna.state import connect

from . import _state_recovery as rec
from . import _state_sqlite as sq
from . import _state_watch as watch
from . import _state_write as write
from ._common import run_async
from ._state_etcd import EtcdServer
from ._state_models import Ledger, LedgerNoSnapshots
from ._state_profile import cprofile_top, page_costs
from ._state_read import reads
from ._state_report import Env, Samples, from_json, fs_of, kerna_commit, render, targets, to_json

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
Measure = Callable[[], dict[str, float]]
Step = tuple[str, Measure]
WORST_EXTRA = 999
NOISY = ("etcd tp", "propagate")
"""Workloads whose figures (32-writer throughput, p99) move most between runs on a
shared machine: they get ``--noisy-runs`` runs."""


@dataclass(frozen=True)
class Sizes:
    reads: int = 1_000_000
    read_rounds: int = 5
    etcd_writes: int = 1000
    writers: int = 32
    per_writer: int = 200
    propagation: int = 2000
    sqlite_writes: int = 300
    sqlite_per_writer: int = 30
    events: int = 100_000

    def scaled(self, f: float) -> Sizes:
        def s(n: int, least: int = 10) -> int:
            return max(least, round(n * f))

        return Sizes(
            reads=s(self.reads, 10_000),
            read_rounds=self.read_rounds,
            etcd_writes=s(self.etcd_writes),
            writers=self.writers,
            per_writer=s(self.per_writer),
            propagation=s(self.propagation),
            sqlite_writes=s(self.sqlite_writes),
            sqlite_per_writer=s(self.sqlite_per_writer, 2),
            events=s(self.events, 2_000),
        )


def interleave(samples: Samples, title: str, steps: list[Step], runs: int) -> None:
    """``runs`` rounds over ``steps``, starting each round one step further on."""
    for i in range(runs):
        k = i % len(steps)
        for name, measure in steps[k:] + steps[:k]:
            t0 = time.perf_counter()
            metrics = measure()
            for key, value in metrics.items():
                samples.setdefault(name, {}).setdefault(key, []).append(value)
            shown = ", ".join(f"{key}={value:,.3g}" for key, value in metrics.items())
            print(
                f"  {title:<11} run {i + 1}/{runs} {name:<22} {shown}"
                f"  ({time.perf_counter() - t0:.1f}s)",
                file=sys.stderr,
                flush=True,
            )


def _rate(fn: Callable[[], float]) -> Measure:
    return lambda: {"rate": fn()}


def _etcd_steps(etcd: EtcdServer, z: Sizes) -> list[tuple[str, list[Step]]]:
    url, ep = etcd.url, etcd.endpoint
    w, k = z.writers, z.per_writer
    return [
        ("read", [("read", lambda: reads(z.reads, z.read_rounds))]),
        (
            "etcd write",
            [
                ("write kerna", lambda: write.kerna_latency(url, z.etcd_writes)),
                ("write raw", lambda: write.raw_latency(ep, z.etcd_writes)),
                ("write client", lambda: write.client_latency(ep, z.etcd_writes)),
                ("write backend", lambda: write.backend_latency(url, z.etcd_writes)),
            ],
        ),
        (
            "etcd tp",
            [
                ("tp kerna", lambda: write.kerna_throughput(url, w, k)),
                ("tp raw", lambda: write.raw_throughput(ep, w, k)),
                ("tp client", lambda: write.client_throughput(ep, w, k)),
                ("tp backend", lambda: write.backend_throughput(url, w, k)),
            ],
        ),
        (
            "propagate",
            [
                ("prop kerna", lambda: watch.kerna_propagation(url, z.propagation)),
                ("prop raw", lambda: watch.raw_propagation(ep, z.propagation)),
            ],
        ),
    ]  # fmt: skip


def _sqlite_steps(directory: Path, z: Sizes) -> list[Step]:
    n, w, k = z.sqlite_writes, z.writers, z.sqlite_per_writer
    return [
        ("sq put", lambda: sq.kerna_put_latency(directory, n)),
        ("sq raw", lambda: sq.raw_latency(directory, n, fenced=False)),
        ("sq save", lambda: sq.kerna_save_latency(directory, n)),
        ("sq raw fenced", lambda: sq.raw_latency(directory, n, fenced=True)),
        ("sq put tp", _rate(lambda: sq.kerna_put_throughput(directory, w, k))),
        ("sq save tp", _rate(lambda: sq.kerna_save_throughput(directory, w, k))),
    ]


# -- recovery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Store:
    name: str
    url: str
    floor: Callable[[type[Agent], bool, int], float]
    alt_floor: Callable[[type[Agent], bool, int], float] | None


def _stores(etcd: EtcdServer, directory: Path) -> list[_Store]:
    db = directory / "recovery.db"
    ep = etcd.endpoint
    memory = f"memory://kerna-bench-recovery-{os.getpid()}"
    return [
        # etcd's floor bounds each page's range (the least work); the alternative is the
        # prefix range with a limit, which etcd 3.4 makes count every key left per page.
        _Store(
            "etcd",
            etcd.url,
            lambda a, snap, n: rec.floor_etcd(ep, a, snap, n, bounded=True),
            lambda a, snap, n: rec.floor_etcd(ep, a, snap, n),
        ),
        _Store(
            "sqlite",
            f"sqlite:///{db}",
            lambda a, snap, n: rec.floor_sqlite(db, a, snap, n),
            lambda a, snap, n: rec.floor_sqlite(db, a, snap, n, kerna_where=True),
        ),
        _Store("memory", memory, lambda a, snap, n: rec.floor_memory(memory, a, snap, n), None),
    ]


def _build(stores: list[_Store], agents: list[type[Agent]], events: int) -> None:
    for store in stores:
        t0 = time.perf_counter()

        async def build(store: _Store = store) -> None:
            # sqlite: build without an fsync per append (reads do not care); the kernels
            # later open the file with the default synchronous=FULL.
            options = {"synchronous": "normal"} if store.name == "sqlite" else {}
            backend = await connect(store.url, **options)
            try:
                for agent in agents:
                    await rec.build_log(backend, agent, events)
            finally:
                await backend.aclose()

        run_async(build, "asyncio")
        names = ", ".join(a.__name__ for a in agents)
        print(
            f"  recovery    built {events:,} events of {names} on {store.name}"
            f" ({time.perf_counter() - t0:.1f}s)",
            file=sys.stderr,
            flush=True,
        )


def _activate(url: str, agent: type[Agent], events: int) -> Measure:
    return lambda: {"seconds": rec.kerna_activation(url, agent, events)}


def _floor(
    floor: Callable[[type[Agent], bool, int], float], agent: type[Agent], events: int
) -> Measure:
    return lambda: {"seconds": floor(agent, agent is Ledger, events)}


def _recovery(samples: Samples, stores: list[_Store], events: int, runs: int) -> None:
    _build(stores, [LedgerNoSnapshots, Ledger], events)
    steps: list[Step] = []
    for s in stores:
        steps += [
            (f"rec {s.name} kerna", _activate(s.url, LedgerNoSnapshots, events)),
            (f"rec {s.name} floor", _floor(s.floor, LedgerNoSnapshots, events)),
            (f"rec {s.name} kerna snap", _activate(s.url, Ledger, events)),
            (f"rec {s.name} floor snap", _floor(s.floor, Ledger, events)),
        ]
        if s.alt_floor is not None:
            steps.append(
                (f"rec {s.name} floor alt", _floor(s.alt_floor, LedgerNoSnapshots, events))
            )
    interleave(samples, "recovery", steps, runs)
    # The worst case with snapshots: 999 events after the last snapshot.
    _build(stores, [Ledger], WORST_EXTRA)
    total = events + WORST_EXTRA
    worst: list[Step] = []
    for s in stores:
        worst += [
            (f"rec {s.name} kerna worst", _activate(s.url, Ledger, total)),
            (f"rec {s.name} floor worst", _floor(s.floor, Ledger, total)),
        ]
    interleave(samples, "recovery", worst, runs)


# -- profiles of misses --------------------------------------------------------------------


def _read_profile(samples: Samples) -> str:
    """What one ``self.state`` read runs: the descriptor behind ``Agent.state`` (and the
    getter's bytecode if it is a property, which Python 3.11 calls as a Python function)."""
    descriptor = inspect.getattr_static(Agent, "state")
    state = statistics.median(samples["read"]["state_ns"])
    text = (
        f"self.state: {state:.1f} ns per read; Agent.state is a"
        f" {type(descriptor).__name__} (Python {platform.python_version()})\n"
    )
    if isinstance(descriptor, property) and descriptor.fget is not None:
        code = io.StringIO()
        dis.dis(descriptor.fget, file=code)
        text += "each read calls the getter, a Python function:\n" + code.getvalue()
    return text


def _profiles(
    samples: Samples, etcd: EtcdServer, stores: list[_Store], z: Sizes
) -> list[tuple[str, str]]:
    missed = {t.text for t in targets(samples) if not t.ok}
    out: list[tuple[str, str]] = []
    if any(t.startswith("`self.state`") for t in missed):
        out.append(("`self.state` read", _read_profile(samples)))
    if any(t.startswith("etcd write") for t in missed):
        writes = z.writers * z.per_writer * 3
        out.append(
            (
                f"etcd: 32 writers, {writes:,} saves via ask (kerna), per write",
                cprofile_top(
                    lambda: write.kerna_throughput(etcd.url, z.writers, z.per_writer * 3), writes
                ),
            )
        )
        out.append(
            (
                f"etcd: the same transaction through the raw stub, {writes:,} writes, per write",
                cprofile_top(
                    lambda: write.raw_throughput(etcd.endpoint, z.writers, z.per_writer * 3),
                    writes,
                ),
            )
        )
    if any(t.startswith("propagation") for t in missed):
        out.append(
            (
                f"propagation: {z.propagation} saves on kernel A, replica on kernel B, per write",
                cprofile_top(
                    lambda: watch.kerna_propagation(etcd.url, z.propagation), z.propagation
                ),
            )
        )
    for s in stores:
        if not any(t.startswith(f"{s.name} replay") for t in missed):
            continue
        options = {"synchronous": "normal"} if s.name == "sqlite" else {}
        costs = page_costs(s.url, LedgerNoSnapshots.__name__, z.events, **options)
        profile = cprofile_top(_activate(s.url, LedgerNoSnapshots, z.events), z.events)
        out.append(
            (
                f"{s.name}: activation without snapshots ({z.events:,} events), per event",
                "one backend.range page of 1,000 keys, by position in the log:\n"
                f"{costs}\n\nactivation, event loop thread:\n{profile}",
            )
        )
    return out


def _recovery_only(z: Sizes, runs: int) -> int:
    """``--only recovery``: the recovery rows, each store's floor / kerna (median of the
    per-run ratios, as in the report) for the replay without snapshots."""
    samples: Samples = {}
    directory = Path(tempfile.mkdtemp(prefix="kerna-bench-sqlite-"))
    try:
        with EtcdServer() as etcd:
            print(f"etcd pid {etcd.pid} at {etcd.endpoint}", file=sys.stderr)
            stores = _stores(etcd, directory)
            _recovery(samples, stores, z.events, runs)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    for name, rows in samples.items():
        values = rows["seconds"]
        print(f"{name:<26} {statistics.median(values):8.3f} s  (runs: {values})")
    for s in stores:
        kerna, floor = samples[f"rec {s.name} kerna"], samples[f"rec {s.name} floor"]
        ratios = [f / k for f, k in zip(floor["seconds"], kerna["seconds"], strict=True)]
        print(f"{s.name} replay without snapshots: floor / kerna {statistics.median(ratios):.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.state_bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs (default 5)")
    parser.add_argument("--recovery-runs", type=int, default=3, help="recovery runs (default 3)")
    parser.add_argument(
        "--noisy-runs",
        type=int,
        default=9,
        help="runs of the 32-writer etcd throughput and of propagation (default 9)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    parser.add_argument("--write", action="store_true", help="write RESULTS-state.md at any scale")
    parser.add_argument("--no-profile", action="store_true", help="do not profile misses")
    parser.add_argument(
        "--only",
        choices=["recovery"],
        help="run only this workload and print its figures (nothing written)",
    )
    parser.add_argument(
        "--render",
        metavar="FILE",
        type=Path,
        help="print the report of a results-state.json instead of running (nothing written)",
    )
    cli_args = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(cli_args)
    if args.render is not None:
        try:
            saved = from_json(json.loads(args.render.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"--render {args.render}: not a results-state.json ({exc!r})")
        print(render(*saved))
        return 0
    z = Sizes().scaled(args.scale)
    if args.only == "recovery":
        return _recovery_only(z, args.recovery_runs)
    commit = kerna_commit()
    started = time.time()
    samples: Samples = {}
    profiles: list[tuple[str, str]] = []
    directory = Path(tempfile.mkdtemp(prefix="kerna-bench-sqlite-"))
    sqlite_fs = fs_of(directory)
    try:
        with EtcdServer() as etcd:
            etcd_version = etcd.version()
            print(f"etcd pid {etcd.pid} at {etcd.endpoint}; warming up...", file=sys.stderr)
            small = Sizes().scaled(0.02)
            for title, steps in _etcd_steps(etcd, small):
                interleave({}, f"warm {title}", steps, 1)
            interleave({}, "warm sqlite", _sqlite_steps(directory, small), 1)
            for title, steps in _etcd_steps(etcd, z):
                runs = max(args.runs, args.noisy_runs) if title in NOISY else args.runs
                interleave(samples, title, steps, runs)
            interleave(samples, "sqlite", _sqlite_steps(directory, z), args.runs)
            stores = _stores(etcd, directory)
            _recovery(samples, stores, z.events, args.recovery_runs)
            if not args.no_profile:
                profiles = _profiles(samples, etcd, stores, z)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    command = ".venv-bench/bin/python -m benchmarks.state_bench" + "".join(
        f" {a}" for a in cli_args
    )
    env = Env(
        command=command,
        commit=commit,
        runs=args.runs,
        noisy_runs=max(args.runs, args.noisy_runs),
        recovery_runs=args.recovery_runs,
        elapsed=time.time() - started,
        etcd_version=etcd_version,
        sqlite_dir=directory,
        sqlite_fs=sqlite_fs,
        events=z.events,
    )
    report = render(samples, env, profiles)
    print(report)
    if args.scale == 1.0 or args.write:
        (HERE / "RESULTS-state.md").write_text(report)
        data = json.dumps(to_json(samples, env, profiles), indent=1)
        (HERE / "results-state.json").write_text(data + "\n")
        print(f"wrote {HERE / 'RESULTS-state.md'} and results-state.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
