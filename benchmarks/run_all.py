"""Run every workload against every system, interleaved, and report medians.

``make bench`` runs ``python -m benchmarks.run_all``: for each workload, five runs, each
visiting every system in turn, starting one system further on in each run (W1-W3 in this
process on a fresh event loop per run; W4 and W5 in a fresh subprocess per run so memory
growth is isolated). W5 (event-loop lag under the idle sweep) runs kerna alone: no peer
has an idle sweep, and its floor, an empty loop's lag, is measured in the same process.
Prints the tables and writes benchmarks/RESULTS.md and benchmarks/results.json.

Options: ``--runs N`` (default 5), ``--scale F`` (multiply workload sizes, e.g. 0.05 for
a smoke run; such a run does not overwrite RESULTS.md unless ``--write``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ._report import Samples, render, summary
from ._systems import System, systems

__all__ = ["WORKLOADS", "main", "measure"]

HERE = Path(__file__).resolve().parent
WORKLOADS = ("W1", "W2 sequential", "W2 concurrent", "W3", "W4", "W5")
ONLY = {"W5": ("kerna",)}
"""Workloads that run on some systems only (the others' metrics are absent)."""


def _subprocess(*args: str) -> dict[str, float]:
    """Run ``python -m benchmarks.<args>`` and return the JSON of its last line."""
    cmd = [sys.executable, "-m", *args]
    out = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _w4(system: System) -> dict[str, float]:
    n = system.sizes.w4_agents
    result = _subprocess("benchmarks._scale", system.kind, system.loop, str(n))
    return {
        "w4_seconds": result["seconds"],
        "w4_rate": result["rate"],
        "w4_bytes": result["bytes_per_agent"],
    }


W5_METRICS = (
    "p50_ms", "p99_ms", "max_ms", "ticks", "floor_p50_ms", "floor_p99_ms", "floor_max_ms",
    "floor_ticks", "activate_s", "fast_reactivations", "gc_gen2",
)  # fmt: skip


def _w5(system: System) -> dict[str, float]:
    s = system.sizes
    result = _subprocess("benchmarks._sweep", system.loop, str(s.w5_agents), f"{s.w5_seconds:g}")
    return {f"w5_{key}": result[key] for key in W5_METRICS}


def measure(system: System, workload: str) -> dict[str, float]:
    """One run of ``workload`` on ``system``: its metrics by name."""
    s = system.sizes
    if workload == "W1":
        return {"w1_rate": system.w1(s.w1_messages)}
    if workload == "W2 sequential":
        p50, p99 = system.w2_sequential(s.w2_sequential)
        return {"w2_p50_us": p50, "w2_p99_us": p99}
    if workload == "W2 concurrent":
        return {"w2_rate": system.w2_concurrent(s.w2_callers, s.w2_per_caller)}
    if workload == "W3":
        return {"w3_rate": system.w3(s.w3_events, s.w3_subscribers)}
    if workload == "W4":
        return _w4(system)
    if workload == "W5":
        return _w5(system)
    raise ValueError(f"unknown workload {workload!r}")


def _warm_up(all_systems: list[System]) -> None:
    """Run W1-W3 once at 1/20 size per system (imports, first allocations)."""
    for system in systems(scale=0.05):
        if system.name not in {s.name for s in all_systems}:
            continue
        for workload in WORKLOADS[:4]:
            measure(system, workload)


def visiting(all_systems: list[System], workload: str, run: int) -> list[System]:
    """The systems ``workload`` runs on, in the order of run ``run`` (0-based): each run
    starts one system further on, so no system always runs first (on a cold loop) or
    right after the same neighbour."""
    names = ONLY.get(workload)
    chosen = [s for s in all_systems if names is None or s.name in names]
    k = run % len(chosen)
    return chosen[k:] + chosen[:k]


def run(all_systems: list[System], runs: int) -> Samples:
    """Interleaved runs: for each workload, ``runs`` rounds over every system."""
    samples: Samples = {s.name: {} for s in all_systems}
    for workload in WORKLOADS:
        for i in range(1, runs + 1):
            for system in visiting(all_systems, workload, i - 1):
                t0 = time.perf_counter()
                metrics = measure(system, workload)
                for key, value in metrics.items():
                    samples[system.name].setdefault(key, []).append(value)
                shown = ", ".join(f"{k}={v:,.1f}" for k, v in metrics.items())
                print(
                    f"  {workload:<14} run {i}/{runs} {system.name:<19} {shown}"
                    f"  ({time.perf_counter() - t0:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs (default 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    parser.add_argument("--write", action="store_true", help="write RESULTS.md at any scale")
    cli_args = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(cli_args)
    all_systems = systems(scale=args.scale)
    started = time.time()
    print(f"warming up ({len(all_systems)} systems)...", file=sys.stderr, flush=True)
    _warm_up(all_systems)
    samples = run(all_systems, args.runs)
    elapsed = time.time() - started
    report = render(all_systems, samples, runs=args.runs, elapsed=elapsed, argv=cli_args)
    print(report)
    if args.scale == 1.0 or args.write:
        (HERE / "RESULTS.md").write_text(report)
        (HERE / "results.json").write_text(json.dumps(summary(all_systems, samples), indent=1))
        print(f"wrote {HERE / 'RESULTS.md'} and results.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
