"""RESULTS-state.md: environment, one table per state workload, targets, profiles."""

from __future__ import annotations

import datetime
import os
import platform
import sqlite3
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ._report import _cpu_model, _git

__all__ = [
    "Env", "Samples", "Target", "from_json", "fs_of", "kerna_commit", "median", "ratio", "render",
    "targets", "to_json",
]  # fmt: skip

Samples = dict[str, dict[str, list[float]]]
"""row name -> metric -> one value per run."""


def median(samples: Samples, row: str, metric: str) -> float:
    return statistics.median(samples[row][metric])


def ratio(samples: Samples, a: str, b: str, metric: str, metric_b: str | None = None) -> float:
    """Median over runs of ``a``'s ``metric`` over ``b``'s (``metric_b``) in the same run."""
    pairs = zip(samples[a][metric], samples[b][metric_b or metric], strict=True)
    return statistics.median(x / y for x, y in pairs)


@dataclass(frozen=True)
class Env:
    """What the report says about how it was made."""

    command: str
    commit: str
    runs: int
    noisy_runs: int
    recovery_runs: int
    elapsed: float
    etcd_version: str
    sqlite_dir: Path
    sqlite_fs: str
    """The file system the sqlite files were on (``fs_of(sqlite_dir)``)."""
    events: int
    date: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    )
    load: tuple[float, float, float] = field(default_factory=os.getloadavg)
    """1/5/15-minute load average when the run ended."""
    machine: str = field(
        default_factory=lambda: f"{os.cpu_count()} CPUs ({_cpu_model()}), {platform.platform()}"
    )
    software: str = field(
        default_factory=lambda: (
            f"Python {platform.python_version()}, default asyncio loop; {_versions()}"
        )
    )
    sqlite_version: str = sqlite3.sqlite_version


def fs_of(path: Path) -> str:
    """The type and mount point of the file system holding ``path``."""
    best, fs = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _, mount, kind, *_ = line.split()
                if str(path).startswith(mount) and len(mount) > len(best):
                    best, fs = mount, kind
    except OSError:
        pass
    return f"{fs} at {best or '?'}"


def _versions() -> str:
    parts = []
    for name in ("kerna", "msgspec", "aetcd", "grpcio", "protobuf", "pyinstrument"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def kerna_commit() -> str:
    """The commit of the code under test (taken when the run starts: the tree may move)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--", "kernel", "state"):
        commit += " + uncommitted changes in kernel/ or state/"
    return commit


def _environment(env: Env) -> list[str]:
    load = env.load
    return [
        "# State benchmark results",
        "",
        f"- Command: `{env.command}`",
        f"- Date: {env.date}; the whole run took {env.elapsed:.0f} s; load average at the end"
        f" {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min; the machine is shared)",
        f"- kerna commit: {env.commit} (when the run started)",
        f"- Machine: {env.machine}",
        f"- {env.software}",
        f"- etcd: {env.etcd_version}, one member started by the benchmark (data directory"
        " on /dev/shm, free 127.0.0.1 ports, default settings), stopped by PID at the end",
        f"- SQLite {env.sqlite_version}; database files in {env.sqlite_dir.parent}"
        f" ({env.sqlite_fs})",
        f"- Method: medians of {env.runs} interleaved runs ({env.noisy_runs} for the"
        f" 32-writer throughput and propagation, {env.recovery_runs} for recovery); each"
        " run visits every row of a workload in turn, in an order rotated per run; min to"
        " max in brackets. A ratio is the median of the per-run ratios (the pair ran"
        " seconds apart). Each measurement runs on a fresh event loop, with fresh kernels"
        " (`Kernel(state=url)`, kerna's defaults) and fresh keys. Every run's value is in"
        " `benchmarks/results-state.json`, from which this file can be re-rendered"
        " (`python -m benchmarks.state_bench --render benchmarks/results-state.json`).",
        "",
    ]


def _cell(values: list[float], fmt: Callable[[float], str]) -> str:
    mid = statistics.median(values)
    return f"{fmt(mid)} ({fmt(min(values))} to {fmt(max(values))})"


def _us(x: float) -> str:
    return f"{x:,.0f}"


def _ns(x: float) -> str:
    return f"{x:.1f}"


def _rate(x: float) -> str:
    return f"{x:,.0f}"


def _s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _table(
    samples: Samples,
    rows: list[tuple[str, str]],
    columns: list[tuple[str, str, Callable[[float], str]]],
    extra: tuple[str, Callable[[str], str]] | None = None,
) -> list[str]:
    """``rows``: (sample row, shown name); ``columns``: (title, metric, format); a
    missing metric shows as a dash."""
    head = ["", *(c[0] for c in columns)] + ([extra[0]] if extra else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, shown in rows:
        cells = [shown]
        for _, metric, fmt in columns:
            values = samples.get(row, {}).get(metric)
            cells.append(_cell(values, fmt) if values else "-")
        if extra:
            cells.append(extra[1](row))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


@dataclass(frozen=True)
class Target:
    text: str
    shown: str
    ok: bool


def targets(samples: Samples) -> list[Target]:
    """Every target of the issue, measured."""
    out: list[Target] = []
    r = median(samples, "read", "ratio")
    out.append(Target("`self.state` read <= 3x a `d[k]` read, in a handler", f"{r:.2f}x", r <= 3))
    for metric, what in (("save_p50", "`save()` p50"), ("p50", "ask + `save()` p50")):
        r = ratio(samples, "write kerna", "write raw", metric, "p50")
        out.append(Target(f"etcd write {what} <= 1.3x raw txn p50", f"{r:.2f}x", r <= 1.3))
    r = ratio(samples, "tp raw", "tp kerna", "rate")
    out.append(Target("etcd writes/s, 32 writers: raw <= 1.3x kerna", f"{r:.2f}x", r <= 1.3))
    for metric in ("p50", "p99"):
        r = ratio(samples, "prop kerna", "prop raw", metric)
        out.append(
            Target(f"propagation {metric} <= 1.3x raw watch {metric}", f"{r:.2f}x", r <= 1.3)
        )
    for backend, floor in (
        ("etcd", " (floor: page ranges bounded to 1,000 keys)"),
        ("sqlite", " (extra row)"),
        ("memory", " (extra row)"),
    ):
        r = ratio(samples, f"rec {backend} floor", f"rec {backend} kerna", "seconds")
        out.append(
            Target(
                f"{backend} replay without snapshots: floor / kerna >= 0.5{floor}",
                f"{r:.2f}",
                r >= 0.5,
            )
        )
    for backend in ("etcd", "sqlite", "memory"):
        for row, what in (("snap", "100,000 events"), ("worst", "+999 after the last one")):
            name = f"rec {backend} kerna {row}"
            if name not in samples:
                continue
            s = median(samples, name, "seconds")
            out.append(
                Target(
                    f"{backend} activation with snapshots ({what}) < 0.3 s", f"{s:.3f} s", s < 0.3
                )
            )
    return out


def _ratio_col(
    samples: Samples, base: str, metric: str, base_metric: str | None = None
) -> Callable[[str], str]:
    def cell(row: str) -> str:
        if row == base or metric not in samples.get(row, {}):
            return "1.00x" if row == base else "-"
        return f"{ratio(samples, row, base, metric, base_metric):.2f}x"

    return cell


def render(samples: Samples, env: Env, profiles: list[tuple[str, str]]) -> str:
    lines = _environment(env)
    n = env.events
    lines += [
        "## Reading `self.state` in a handler vs `d[k]` on a dict",
        "",
        "One handler times 1,000,000 reads of each (10 per loop iteration; best of 5 loops"
        " per run); the cost of 10 reads of a local variable per iteration (the loop and"
        " the store into a local) is subtracted, leaving the read alone.",
        "",
    ]
    lines += _table(
        samples,
        [("read", "ns per read")],
        [
            ("`self.state`", "state_ns", _ns),
            ("`d[k]`", "dict_ns", _ns),
            ("loop + local (subtracted)", "baseline_ns", _ns),
            ("`self.state` / `d[k]`", "ratio", lambda x: f"{x:.2f}x"),
            ("gross ratio (loop included)", "gross_ratio", lambda x: f"{x:.2f}x"),
        ],
    )
    lines += [
        "## etcd writes: kerna vs the same transaction sent raw",
        "",
        "Sequential: one writer, p50 / p99 in µs. kerna: `save()` timed inside the"
        " handler, and the whole ask (ask + save) timed by the caller. raw: the same"
        " `Txn` (claim create-revision and state mod-revision compares, put on success,"
        " two gets on failure) through aetcd's gRPC `KVStub`, channel and metadata as"
        " kerna's; `aetcd.Client.transaction` as a second reference; and the same"
        " transaction through kerna's etcd backend alone (`backend.txn`, no agent), which"
        " splits kerna's cost between the backend and the agent/ask/persistence layers.",
        "",
    ]
    base = _ratio_col(samples, "write raw", "p50")
    lines += _table(
        samples,
        [
            ("write kerna", "kerna ask + `save()`"),
            ("write raw", "raw `KVStub.Txn` (floor)"),
            ("write client", "`aetcd.Client.transaction`"),
            ("write backend", "kerna `backend.txn` alone (no agent)"),
        ],
        [
            ("`save()` p50 µs", "save_p50", _us),
            ("`save()` p99 µs", "save_p99", _us),
            ("p50 µs", "p50", _us),
            ("p99 µs", "p99", _us),
        ],
        ("p50 / floor", base),
    )
    kerna_save = ratio(samples, "write kerna", "write raw", "save_p50", "p50")
    kerna_p99 = ratio(samples, "write kerna", "write raw", "save_p99", "p99")
    lines += [
        f"`save()` alone: p50 {kerna_save:.2f}x, p99 {kerna_p99:.2f}x the floor's.",
        "",
        "32 writers at once (kerna: 32 agents, each asked by its own caller, one save per"
        " ask; raw and aetcd.Client: 32 coroutines), each on its own key; writes/s, and"
        " the benchmark process's CPU time (all threads, gRPC's included; not etcd's) per"
        " write: with 32 writers the client side is CPU-bound on 2 cores.",
        "",
    ]
    lines += _table(
        samples,
        [
            ("tp kerna", "kerna (32 agents)"),
            ("tp raw", "raw `KVStub.Txn` (floor)"),
            ("tp client", "`aetcd.Client`"),
            ("tp backend", "kerna `backend.txn` alone, 32 coroutines"),
        ],
        [("writes/s", "rate", _rate), ("client CPU µs per write", "cpu_us", _us)],
        ("/ floor", _ratio_col(samples, "tp raw", "rate")),
    )
    lines += [
        "## Propagation: a write on kernel A until kernel B's replica applied it",
        "",
        "µs from just before the write is issued to the moment the other side has it:"
        " kerna from before `await self.save()` in kernel A's handler to kernel B's"
        " `Replica` `on_change` (same prefix, decoder and key mapping as"
        " `Kernel.replica`); raw from before encoding the same transaction to a raw watch"
        " stream's event on a second channel (value msgspec-decoded). One write at a time.",
        "",
    ]
    lines += _table(
        samples,
        [("prop kerna", "kerna (save -> replica)"), ("prop raw", "raw txn -> raw watch (floor)")],
        [("p50 µs", "p50", _us), ("p99 µs", "p99", _us)],
        ("p50 / floor", _ratio_col(samples, "prop raw", "p50")),
    )
    lines += [
        "## sqlite:// writes vs raw sqlite3 with the same durability",
        "",
        "Same directory, fresh files per run, WAL, `synchronous=FULL`, exclusive locking,"
        " one transaction per write. raw: one connection in a plain loop (no thread, no"
        " event loop): BEGIN IMMEDIATE, SELECT the compare row(s), INSERT OR REPLACE the"
        " value, INSERT a history row, UPDATE the revision in `meta`, COMMIT. kerna:"
        " `backend.put(key, value, expected=rev)` (one compare) and an agent's `save()`"
        " (claim + state compares). Sequential latency in µs; no target in the issue.",
        "",
    ]
    lines += _table(
        samples,
        [
            ("sq put", "kerna `backend.put`"),
            ("sq raw", "raw, one compare (floor of put)"),
            ("sq save", "kerna ask + `save()`"),
            ("sq raw fenced", "raw, two compares (floor of save)"),
        ],
        [
            ("`save()` p50", "save_p50", _us),
            ("`save()` p99", "save_p99", _us),
            ("p50 µs", "p50", _us),
            ("p99 µs", "p99", _us),
        ],
    )
    put_r = ratio(samples, "sq put", "sq raw", "p50")
    save_r = ratio(samples, "sq save", "sq raw fenced", "save_p50", "p50")
    lines += [
        f"p50 over the floor: `backend.put` {put_r:.2f}x; `save()` {save_r:.2f}x.",
        "",
        "Throughput, writes/s: kerna with 32 writers at once (its store commits every"
        " queued write together: group commit) against the raw single-connection loop"
        " (one writer, one commit per write: all one connection does).",
        "",
    ]
    lines += _table(
        samples,
        [
            ("sq put tp", "kerna `backend.put`, 32 coroutines"),
            ("sq save tp", "kerna `save()`, 32 agents via ask"),
            ("sq raw", "raw loop, one compare (floor)"),
            ("sq raw fenced", "raw loop, two compares"),
        ],
        [("writes/s", "rate", _rate)],
        ("/ raw one compare", _ratio_col(samples, "sq raw", "rate")),
    )
    lines += [
        f"## Recovery: activating an event-sourced agent with {n:,} events",
        "",
        "Seconds of the first ask to the agent in a freshly started kernel: lease, claim,"
        " snapshot read, paged replay (1,000 per page), apply. The floor reads the same"
        " keys in pages of 1,000 with the raw client and msgspec-decodes each record into"
        " the same struct (typed event), applying nothing; on etcd each page's range ends"
        " at its 1,000th key (the least work: with a prefix range and a limit, etcd 3.4"
        " counts every key left in the range on each page, the alternative row)."
        " floor / kerna >= 0.5 is the target; ratios are per run.",
        "",
    ]
    rec_rows: list[tuple[str, str]] = []
    for backend, alt in (
        ("etcd", "floor, prefix range with `limit=1000` (kerna's replay before bounded pages)"),
        ("sqlite", "floor, two lower bounds (`key >= prefix AND key < end AND key > last`)"),
        ("memory", ""),
    ):
        floor_name = {
            "etcd": "floor: raw `KVStub.Range`, each page's range_end bounded to its 1,000 keys",
            "sqlite": "floor: sqlite3 `WHERE key > last AND key < end LIMIT 1001`",
            "memory": "floor: 1,000-value slices of a sorted list",
        }[backend]
        rec_rows += [
            (f"rec {backend} kerna", f"{backend}: kerna, no snapshots"),
            (f"rec {backend} floor", f"{backend}: {floor_name}"),
        ]
        if alt:
            rec_rows.append((f"rec {backend} floor alt", f"{backend}: {alt}"))
        rec_rows += [
            (f"rec {backend} kerna snap", f"{backend}: kerna, snapshot every 1,000"),
            (f"rec {backend} floor snap", f"{backend}: floor, snapshot + rest"),
            (f"rec {backend} kerna worst", f"{backend}: kerna, snapshots, +999 events"),
            (f"rec {backend} floor worst", f"{backend}: floor, snapshot + 999"),
        ]

    def floor_over_kerna(row: str) -> str:
        """On a kerna row: its floor over it; on an alternative floor's row: that floor
        over kerna without snapshots."""
        if row.endswith(" floor alt"):
            floor, row = row, row.replace(" floor alt", " kerna")
        elif " kerna" in row:
            floor = row.replace(" kerna", " floor")
        else:
            return ""
        if floor not in samples or row not in samples:
            return ""
        return f"{ratio(samples, floor, row, 'seconds'):.2f}"

    lines += _table(
        samples, [r for r in rec_rows if r[0] in samples], [("seconds", "seconds", _s)],
        ("floor / kerna", floor_over_kerna),
    )  # fmt: skip
    lines += [
        "## Targets",
        "",
        "Every verdict is on the median of the runs made (the counts are under Method; a"
        " ratio is the median of the per-run ratios); no run is repeated, dropped or picked.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    for t in targets(samples):
        lines.append(f"| {t.text} | {t.shown} | {'PASS' if t.ok else 'MISS'} |")
    lines += [""]
    if profiles:
        lines += [
            "## Profiles of kerna's side for the misses",
            "",
            "Run after the timed runs, on the workload of each miss: cProfile (own time per"
            " function, largest first, per unit of work; cProfile inflates call-heavy code,"
            " so read shares and call counts, not absolute times), and for replays the cost"
            " of single pages by position in the log.",
            "",
        ]
        for title, text in profiles:
            lines += [f"### {title}", "", "```", text.rstrip(), "```", ""]
    lines += [
        "## Notes",
        "",
        "- Files: `benchmarks/state_bench.py` (the command), `_state_etcd.py` (etcd"
        " process, raw channel), `_state_models.py` (state types and agents),"
        " `_state_read.py`, `_state_write.py`, `_state_watch.py`, `_state_sqlite.py`,"
        " `_state_recovery.py` (workloads), `_state_profile.py`, `_state_report.py`.",
        "- etcd on /dev/shm makes its fsync nearly free: the write figures are the"
        " client and server CPU path, where kerna's overhead shows most.",
        "- p99 on a shared 2-core machine moves a lot between runs (see the ranges);"
        " the write targets are judged on p50 and throughput, propagation on both.",
        "",
    ]
    return "\n".join(lines)


def to_json(samples: Samples, env: Env, profiles: list[tuple[str, str]]) -> dict[str, Any]:
    """Everything ``render`` needs (every run's value of every row), for
    results-state.json; the targets are included as rendered, for reading."""
    return {
        "env": {**asdict(env), "sqlite_dir": str(env.sqlite_dir)},
        "targets": [asdict(t) for t in targets(samples)],
        "samples": samples,
        "profiles": [list(p) for p in profiles],
    }


def from_json(data: dict[str, Any]) -> tuple[Samples, Env, list[tuple[str, str]]]:
    """The inverse of ``to_json``: ``render(*from_json(data))`` re-derives the report."""
    env = dict(data["env"])
    env["sqlite_dir"] = Path(env["sqlite_dir"])
    env["load"] = tuple(env["load"])
    profiles = [(title, text) for title, text in data["profiles"]]
    return data["samples"], Env(**env), profiles
