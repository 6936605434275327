"""Cross-process benchmarks (ISSUE8 section 6), side by side in one run.

``.venv-bench/bin/python -m benchmarks.net_bench`` (``make bench-net``) runs two
processes on 127.0.0.1 per measurement, a server and a caller, both started here on
free ports and stopped by PID (autogen: a host and two workers, three processes), and
one ``nats-server`` for the whole run (``/usr/sbin/nats-server``, temp dir, stopped by
PID at the end). Workloads: W5 a caller asking an echo agent in the other process,
sequential p50/p99 over 5,000 asks and 64 concurrent callers for 5 s (req/s); W6
200,000 one-way tells, messages per second at the receiver. Systems, each on the
default asyncio loop and on uvloop: the raw floor (length-prefixed msgspec over asyncio
streams) without and with write coalescing, kerna over tcp, kerna over nats, raw
nats-py, and autogen-ext's ``GrpcWorkerAgentRuntime`` (asyncio only).

Interleaved: for each workload, ``--runs`` rounds (default 3), each visiting every
system, starting one further on per round; medians, min to max, ratios per run then
the median. Writes benchmarks/RESULTS-net.md and benchmarks/results-net.json (the
command, the environment and every run's values). ``--scale F`` multiplies the sizes
(0.05 is a smoke run, which writes nothing unless ``--write``); ``--only NAME,...``
runs some systems; ``--render FILE`` re-renders the report from a results file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ._common import LoopName
from ._net_proc import PIN_ENV, PROFILE_ENV
from ._net_report import Samples, environment, render, targets

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
NATS_SERVER = "/usr/sbin/nats-server"
START_TIMEOUT = 30.0
WORKLOADS = ("seq", "conc", "w6")
TWO_CALLERS = ("kerna-tcp", "kerna-nats", "autogen")
"""Systems checked for replies delivered to the wrong one of two concurrent callers."""
TWO_CALLER_SECONDS = 2.0
TWO_CALLER_GRACE = 30.0
"""A caller still running this long after its window has an ask that was never answered."""


@dataclass(frozen=True)
class NetSizes:
    seq: int = 5_000
    conc_seconds: float = 5.0
    w6: int = 200_000

    def scaled(self, f: float) -> NetSizes:
        return NetSizes(
            max(50, round(self.seq * f)),
            max(0.5, self.conc_seconds * f),
            max(500, round(self.w6 * f)),
        )


FULL = NetSizes()
AUTOGEN = NetSizes(seq=1_000, w6=5_000)
"""autogen's grpc runtime handles a few thousand messages/s: the full sizes would take
minutes per run; every figure is per second or a percentile, so only run time changes."""


@dataclass(frozen=True)
class NetSystem:
    name: str
    kind: str  # server/caller kind of benchmarks._net_proc
    loop: LoopName
    sizes: NetSizes


def transport_available(scheme: str) -> str | None:
    """None if kerna has a ``scheme`` transport here, else why not."""
    from kerna.transports import transport_class

    try:
        transport_class(f"{scheme}://127.0.0.1:1/x")
    except Exception as exc:  # any failure means the row cannot run
        return f"{type(exc).__name__}: {exc}"
    return None


def all_systems(scale: float) -> list[NetSystem]:
    full, autogen = FULL.scaled(scale), AUTOGEN.scaled(scale)
    out: list[NetSystem] = []
    for loop in ("asyncio", "uvloop"):
        suffix = "" if loop == "asyncio" else " (uvloop)"
        out += [
            NetSystem(f"floor{suffix}", "floor", loop, full),
            NetSystem(f"floor coalesced{suffix}", "floor-coalesced", loop, full),
            NetSystem(f"kerna tcp{suffix}", "kerna-tcp", loop, full),
            NetSystem(f"nats-py{suffix}", "nats", loop, full),
            NetSystem(f"kerna nats{suffix}", "kerna-nats", loop, full),
        ]
    out.append(NetSystem("autogen grpc", "autogen", "asyncio", autogen))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop one process we started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)  # a profiled server writes its profile on the way out
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _start_server(
    kind: str, loop: str, arg: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``_net_proc serve``; return it and the address it printed once ready.

    Its stderr goes to a temp file (read back if it fails to start), never a pipe no one
    reads: a chatty server must not block on a full pipe mid-measurement."""
    cmd = [sys.executable, "-m", "benchmarks._net_proc", "serve", kind, loop, arg]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, **env} if env else None,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ready ADDRESS", or "" once it died
        if not line.startswith("ready "):
            _stop(proc)
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} did not start:\n{line}{err.read()[-3000:]}")
    return proc, line.split(" ", 1)[1].strip()


class Nats:
    """One nats-server on a free port in a temp dir (stopped by PID on exit)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="kerna-bench-nats-")
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-m", "0"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"{NATS_SERVER} did not start on {self.port}") from None
                time.sleep(0.05)
        self.url = f"nats://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def servers(
    system: NetSystem, nats: Nats | None, env: dict[str, str] | None = None
) -> Iterator[tuple[str, str, str]]:
    """Start ``system``'s server side; yield (caller kind, server address, caller's
    listen URL); stop every process started here by PID afterwards."""
    procs: list[subprocess.Popen[str]] = []
    loop = system.loop
    try:
        if system.kind in ("floor", "floor-coalesced"):
            proc, address = _start_server(system.kind, loop, str(free_port()), env)
            procs.append(proc)
            yield system.kind, address, ""
        elif system.kind == "kerna-tcp":
            proc, address = _start_server("kerna", loop, f"tcp://127.0.0.1:{free_port()}", env)
            procs.append(proc)
            yield "kerna", address, f"tcp://127.0.0.1:{free_port()}"
        elif system.kind in ("nats", "kerna-nats"):
            assert nats is not None
            if system.kind == "nats":
                proc, address = _start_server("nats", loop, nats.url, env)
                procs.append(proc)
                yield "nats", address, ""
            else:
                tag = free_port()
                proc, address = _start_server("kerna", loop, f"{nats.url}/server{tag}", env)
                procs.append(proc)
                yield "kerna", address, f"{nats.url}/caller{tag}"
        elif system.kind == "autogen":
            host, address = _start_server("autogen-host", "asyncio", str(free_port()), env)
            procs.append(host)
            worker, _ = _start_server("autogen-worker", "asyncio", address, env)
            procs.append(worker)
            yield "autogen", address, ""
        else:
            raise ValueError(system.kind)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _caller(
    system: NetSystem, kind: str, address: str, workload: str, size: float, listen: str
) -> list[str]:
    return [
        sys.executable, "-m", "benchmarks._net_proc", "call", kind, system.loop,
        address, workload, f"{size:g}", listen,
    ]  # fmt: skip


def _result(cmd: list[str], code: int, stdout: str, stderr: str) -> dict[str, float]:
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    got: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
    return got


def measure(system: NetSystem, workload: str, nats: Nats | None) -> dict[str, float]:
    """One run of ``workload`` on ``system``, in a fresh caller process."""
    s = system.sizes
    size = {"seq": s.seq, "conc": s.conc_seconds, "w6": s.w6}[workload]
    with servers(system, nats) as (kind, address, listen):
        cmd = _caller(system, kind, address, workload, size, listen)
        out = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, check=False)
    got = _result(cmd, out.returncode, out.stdout, out.stderr)
    return {f"{workload}_{k}": v for k, v in got.items()}


def two_callers(system: NetSystem, nats: Nats | None, seconds: float) -> dict[str, float]:
    """Two caller processes (nodes, workers) asking one echo agent at once, 64 tasks
    each, for ``seconds``: how many asks each made and how many replies answered
    another ask than the one they completed (autogen upstream issue #7016)."""
    with servers(system, nats) as (kind, address, listen):
        cmds, procs = [], []
        for i in range(2):
            own = listen.replace("/caller", f"/caller{i}-") if "/caller" in listen else listen
            if own.startswith("tcp://"):
                own = f"tcp://127.0.0.1:{free_port()}"
            cmd = _caller(system, kind, address, "conc", seconds, own)
            cmds.append(cmd)
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=HERE.parent,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results: list[dict[str, float]] = []
        hung = 0
        try:
            for cmd, proc in zip(cmds, procs, strict=True):
                try:
                    stdout, stderr = proc.communicate(timeout=seconds + TWO_CALLER_GRACE)
                except subprocess.TimeoutExpired:
                    hung += 1  # an ask never answered: its reply went elsewhere or nowhere
                    results.append({"asks": 0, "mismatches": 0})
                    continue
                results.append(_result(cmd, proc.returncode, stdout, stderr))
        finally:
            for proc in procs:
                _stop(proc)
    return {
        "asks_a": results[0]["asks"],
        "asks_b": results[1]["asks"],
        "mismatches": results[0]["mismatches"] + results[1]["mismatches"],
        "hung": hung,
    }


PROFILE_LINES = 30
"""Lines kept of each flat profile: the functions with the most own time."""


def _top(path: Path) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        return f"(no profile: {exc})"
    body = [line for line in lines if line.strip() and not line.lstrip().startswith(("_", "/"))]
    return "\n".join(body[:PROFILE_LINES])


def profile(system: NetSystem, workload: str, nats: Nats | None) -> dict[str, str]:
    """One more run of ``workload`` on ``system`` with both processes under pyinstrument;
    the top of each one's call tree, by process."""
    s = system.sizes
    size = {"seq": s.seq, "conc": s.conc_seconds, "w6": s.w6}[workload]
    with tempfile.TemporaryDirectory(prefix="kerna-bench-profile-") as tmp:
        server_out, caller_out = Path(tmp) / "server.txt", Path(tmp) / "caller.txt"
        with servers(system, nats, {PROFILE_ENV: str(server_out)}) as (kind, address, listen):
            cmd = _caller(system, kind, address, workload, size, listen)
            out = subprocess.run(
                cmd, cwd=HERE.parent, capture_output=True, text=True, check=False,
                env={**os.environ, PROFILE_ENV: str(caller_out)},
            )  # fmt: skip
        _result(cmd, out.returncode, out.stdout, out.stderr)
        return {
            f"{system.name} {workload}: caller": _top(caller_out),
            f"{system.name} {workload}: server": _top(server_out),
        }


def run(systems: list[NetSystem], runs: int, nats: Nats | None) -> Samples:
    samples: Samples = {s.name: {} for s in systems}
    for workload in WORKLOADS:
        for i in range(runs):
            k = i % len(systems)
            for system in systems[k:] + systems[:k]:
                t0 = time.perf_counter()
                metrics = measure(system, workload, nats)
                for key, value in metrics.items():
                    samples[system.name].setdefault(key, []).append(value)
                shown = ", ".join(f"{k}={v:,.1f}" for k, v in metrics.items())
                print(
                    f"  {workload:<5} run {i + 1}/{runs} {system.name:<24} {shown}"
                    f"  ({time.perf_counter() - t0:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.net_bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    parser.add_argument("--write", action="store_true", help="write the report at any scale")
    parser.add_argument("--only", default="", help="comma-separated system names")
    parser.add_argument("--render", metavar="FILE", help="re-render from a results file")
    parser.add_argument("--no-profile", action="store_true", help="do not profile the misses")
    parser.add_argument(
        "--pin", action="store_true", help="servers on the last CPU, callers on the first"
    )
    cli_args = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(cli_args)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        sys.stdout.write(render(data))
        return 0
    systems = all_systems(args.scale)
    skipped: dict[str, str] = {}
    for scheme in ("tcp", "nats"):
        why = transport_available(scheme)
        if why is not None:
            for s in systems:
                if s.kind == f"kerna-{scheme}":
                    skipped[s.name] = f"kerna has no {scheme}:// transport on this commit ({why})"
    if not os.access(NATS_SERVER, os.X_OK):
        for s in systems:
            if s.kind in ("nats", "kerna-nats"):
                skipped[s.name] = f"{NATS_SERVER} is not installed"
    if args.only:
        wanted = set(args.only.split(","))
        skipped.update({s.name: "not selected (--only)" for s in systems if s.name not in wanted})
    chosen = [s for s in systems if s.name not in skipped]
    if args.pin:  # read by every _net_proc started from here (kerna's own too)
        os.environ[PIN_ENV] = "1"
    started = time.time()
    nats = Nats() if any(s.kind in ("nats", "kerna-nats") for s in chosen) else None
    checks: dict[str, dict[str, float]] = {}
    profiles: dict[str, str] = {}
    try:
        samples = run(chosen, args.runs, nats)
        for system in chosen:
            if system.kind in TWO_CALLERS:
                checks[system.name] = got = two_callers(system, nats, TWO_CALLER_SECONDS)
                print(f"  two callers {system.name:<24} {got}", file=sys.stderr, flush=True)
        if not args.no_profile:
            by_name = {s.name: s for s in chosen}
            missed = {(t.system, t.workload) for t in targets(samples) if t.verdict == "MISS"}
            for name, workload in sorted(missed):
                print(f"  profiling {name} {workload}", file=sys.stderr, flush=True)
                profiles.update(profile(by_name[name], workload, nats))
    finally:
        if nats is not None:
            nats.close()
    data = {
        "env": environment(cli_args, args.runs, time.time() - started),
        "sizes": {s.name: asdict(s.sizes) for s in chosen},
        "skipped": skipped,
        "samples": samples,
        "two_callers": checks,
        "profiles": profiles,
    }
    report = render(data)
    print(report)
    if args.scale == 1.0 or args.write:
        (HERE / "RESULTS-net.md").write_text(report)
        (HERE / "results-net.json").write_text(json.dumps(data, indent=1))
        print(f"wrote {HERE / 'RESULTS-net.md'} and results-net.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
