"""RESULTS-net.md from the cross-process samples: environment, tables, targets."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ._report import _cpu_model, _git

__all__ = ["Samples", "Target", "environment", "render", "targets"]

Samples = dict[str, dict[str, list[float]]]
"""system name -> metric name -> one value per run."""

PACKAGES = ("kerna", "msgspec", "uvloop", "nats-py", "autogen-core", "autogen-ext", "grpcio")


def _versions() -> str:
    parts = []
    for name in PACKAGES:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def _nats_server_version() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["/usr/sbin/nats-server", "--version"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "not installed"
    return out.stdout.strip()


def environment(argv: list[str], runs: int, elapsed: float) -> dict[str, Any]:
    """Everything the report says about how it was made (kept in results-net.json)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--", "kernel", "transports"):
        commit += " + uncommitted kernel/transports changes"
    load = os.getloadavg()
    return {
        "command": ".venv-bench/bin/python -m benchmarks.net_bench " + " ".join(argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": round(elapsed),
        "load": [round(x, 2) for x in load],
        "commit": commit,
        "machine": f"{os.cpu_count()} CPUs ({_cpu_model()}), {platform.platform()}",
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "packages": _versions(),
        "nats_server": _nats_server_version(),
        "runs": runs,
    }


def _cell(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}} ({min(values):{fmt}} to {max(values):{fmt}})"


def _ratio(samples: Samples, a: str, b: str, metric: str) -> float | None:
    """Median over runs of ``a``'s value over ``b``'s in the same run."""
    if metric not in samples.get(a, {}) or metric not in samples.get(b, {}):
        return None
    pairs = zip(samples[a][metric], samples[b][metric], strict=True)
    return statistics.median(x / y for x, y in pairs)


@dataclass(frozen=True)
class Target:
    text: str
    measured: str
    verdict: str  # PASS, MISS or "not run"
    system: str  # the kerna row it judges (profiled when it misses)
    workload: str  # seq, conc or w6


def targets(samples: Samples) -> list[Target]:
    """ISSUE8 section 6's targets, each judged on the median of the per-run ratios."""
    rows: list[Target] = []

    def target(text: str, system: str, other: str, metric: str, op: str, bound: float) -> None:
        # a latency target is "system / other <= bound"; a rate target "system / other >= bound"
        r = _ratio(samples, system, other, metric)
        workload = metric.split("_", 1)[0]
        if r is None:
            rows.append(Target(text, "not measured", "not run", system, workload))
            return
        ok = r >= bound if op == ">=" else r <= bound
        rows.append(Target(text, f"{r:.2f}x", "PASS" if ok else "MISS", system, workload))

    for sfx in ("", " (uvloop)"):
        kt, floor, co, kn = (
            f"kerna tcp{sfx}",
            f"floor{sfx}",
            f"floor coalesced{sfx}",
            f"kerna nats{sfx}",
        )
        target(f"W5 64 in flight: {kt} >= 0.5x {co}", kt, co, "conc_rate", ">=", 0.5)
        target(f"W5 sequential p50: {kt} <= 1.5x {floor}", kt, floor, "seq_p50_us", "<=", 1.5)
        target(f"W6 msgs/s: {kt} >= 0.5x {co}", kt, co, "w6_rate", ">=", 0.5)
        nats = f"nats-py{sfx}"
        target(f"W5 sequential p50: {kn} <= 1.3x {nats}", kn, nats, "seq_p50_us", "<=", 1.3)
    target(
        "W5 64 in flight: kerna tcp >= 20x autogen grpc",
        "kerna tcp", "autogen grpc", "conc_rate", ">=", 20,
    )  # fmt: skip
    return rows


def render(data: dict[str, Any]) -> str:
    """The whole RESULTS-net.md text from results-net.json's content."""
    env, samples, sizes = data["env"], data["samples"], data["sizes"]
    lines = [
        "# Cross-process benchmark results (ISSUE8 section 6)",
        "",
        f"- Command: `{env['command'].strip()}` (`make bench-net` runs it with `--pin` only)",
        f"- Date: {env['date']}; the run took {env['elapsed_s']} s; load average at the end"
        f" {' / '.join(str(x) for x in env['load'])} (1/5/15 min; other work on the machine"
        " shows here)",
        f"- kerna commit: {env['commit']}",
        f"- Machine: {env['machine']}; Python {env['python']}",
        f"- Packages: {env['packages']}; {env['nats_server']}",
        f"- Method: every figure is the median of {env['runs']} interleaved runs (each run"
        " visits every system in turn, starting one system further on per run; min to max"
        " in brackets); a ratio is the median of the per-run ratios. Each measurement starts"
        " its own server process(es) and a fresh caller process on 127.0.0.1 (free ports,"
        " stopped by PID), makes 200 warm-up asks, then the workload. One nats-server for"
        " the whole run."
        + (
            " Pinned (`--pin`): every server process on the last CPU, every caller on the"
            " first (nats-server and autogen's host unpinned)."
            if "--pin" in env["command"].split()
            else ""
        )
        + " See benchmarks/README.md (Cross-process).",
        "",
    ]
    names = list(samples)

    def table(title: str, size_title: str, size_key: str, cols: list[tuple[str, str, str]]) -> None:
        lines.extend([f"## {title}", ""])
        head = ["system", size_title, *(c[0] for c in cols)]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for name in names:
            got = samples[name]
            if cols[0][1] not in got:
                continue
            size = sizes[name][size_key]
            cells = [name, f"{size:,g}"]
            cells += [_cell(got[metric], fmt) for _, metric, fmt in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    table(
        "W5 sequential: one caller asks an echo agent in another process",
        "asks", "seq", [("p50 µs", "seq_p50_us", ",.1f"), ("p99 µs", "seq_p99_us", ",.1f")],
    )  # fmt: skip
    table(
        "W5 concurrent: 64 callers asking in a loop", "seconds", "conc_seconds",
        [("req/s", "conc_rate", ",.0f")],
    )  # fmt: skip
    table(
        "W6 one-way: tells from process A to an agent in process B (rate at the receiver)",
        "tells", "w6", [("msgs/s", "w6_rate", ",.0f")],
    )  # fmt: skip
    lines += [
        "## Ratios (median of per-run ratios; > 1 = the first system faster)",
        "",
        "| ratio | W5 p50 | W5 64 in flight | W6 |",
        "|---|---|---|---|",
    ]
    pairs = []
    for sfx in ("", " (uvloop)"):
        pairs += [
            (f"kerna tcp{sfx}", f"floor coalesced{sfx}"),
            (f"kerna tcp{sfx}", f"floor{sfx}"),
            (f"floor coalesced{sfx}", f"floor{sfx}"),
            (f"kerna nats{sfx}", f"nats-py{sfx}"),
        ]
    pairs += [("kerna tcp", "autogen grpc"), ("floor coalesced", "autogen grpc")]
    for a, b in pairs:
        p50 = _ratio(samples, b, a, "seq_p50_us")
        cells = [p50, _ratio(samples, a, b, "conc_rate"), _ratio(samples, a, b, "w6_rate")]
        if all(c is None for c in cells):
            continue
        shown = [f"{c:.2f}x" if c is not None else "-" for c in cells]
        lines.append(f"| {a} vs {b} | " + " | ".join(shown) + " |")
    lines += [
        "",
        "## Targets",
        "",
        f"Every verdict is on the median of the {env['runs']} runs made (a ratio: the median"
        " of the per-run ratios); no run is repeated, dropped or picked.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {t.text} | {t.measured} | {t.verdict} |" for t in targets(samples)]
    lines.append("")
    if data.get("two_callers"):
        lines += [
            "## Two callers, one agent: each gets its own replies",
            "",
            "Two caller processes (kerna nodes; autogen workers) ask the one echo agent at"
            " once, 64 tasks each, every request number unique across both; a reply that"
            " answers another ask than the one it completes is a mismatch; a caller still"
            " running 30 s after its window ends has an ask that was never answered (hung)."
            " autogen upstream issue #7016 reports that two workers get each other's replies.",
            "",
            "| system | asks (caller A, caller B) | mismatched replies | callers hung | verdict |",
            "|---|---|---|---|---|",
        ]
        for name, got in data["two_callers"].items():
            hung = got.get("hung", 0)
            ok = not got["mismatches"] and not hung and got["asks_a"] and got["asks_b"]
            lines.append(
                f"| {name} | {got['asks_a']:,.0f}, {got['asks_b']:,.0f} |"
                f" {got['mismatches']:,.0f} | {hung:.0f} | {'PASS' if ok else 'MISS'} |"
            )
        lines.append("")
    if data.get("skipped"):
        lines += ["## Not run", ""]
        lines += [f"- {name}: {why}" for name, why in data["skipped"].items()]
        lines.append("")
    if data.get("profiles"):
        lines += [
            "## Profiles of the misses",
            "",
            "pyinstrument (0.2 ms interval) in the caller (during the workload) and in the"
            " server process (its whole life: idle time is `epoll.poll`) of one extra run"
            " of each kerna row and workload that missed a target: the functions with the"
            " most own time, in seconds (profiled runs are slower and not part of any"
            " figure above).",
            "",
        ]
    for title, text in data.get("profiles", {}).items():
        lines += [f"### {title}", "", "```", text.rstrip(), "```", ""]
    lines += [data.get("notes", "").rstrip(), ""] if data.get("notes") else []
    return "\n".join(lines)
