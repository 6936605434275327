"""``kerna top``: a live terminal view of a running node (rich: the ``cli`` extra).

Every ``--interval`` seconds (1 by default) it reads the node's ``/admin/status`` (the
admin token rules apply) and redraws one table: per agent type its activations, queue
depth, handlers in flight, pending work, messages handled and failed per second over
the last interval, dead letters, and the mailbox wait and handling time (p50 and p99 of
the messages timed during the interval, from the node's histograms: ``[node]
timing``). ``--once`` prints one frame, from two reads an interval apart, and exits
(for scripts). A node that cannot be reached is shown as such and read again at the
next tick; ``--once`` then exits 1. Under it, when the node's kernel has a
``kerna.plugins.Resilience``, one row per target: its circuit breaker's state
(``closed``, ``half-open``, ``open``; ``-`` for a policy without a breaker), how many
times it opened, and its calls refused by the open breaker, retries and fallbacks per
second over the last interval.

``render(previous, current, elapsed)`` builds the frame from two status bodies; the
rest only reads them and draws.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._timing import Histogram

__all__ = ["add_top", "render"]

Status = dict[str, Any]


def add_top(commands: Any, node_options: Any) -> None:
    """Add ``kerna top`` (``node_options`` adds ``--node`` and ``--token``)."""
    text = "a live view of a node: agent types, queues, rates, latency"
    parser: argparse.ArgumentParser = commands.add_parser("top", help=text, description=text)
    node_options(parser)
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between reads (default: 1)"
    )
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.set_defaults(run=_top)


def _interval_quantiles(before: Any, after: Any) -> tuple[float | None, float | None]:
    """p50 and p99 of the observations a histogram gained between two reads."""
    if not after:
        return None, None
    old = before["counts"] if before else [0] * len(after["counts"])
    delta = tuple(max(0, a - b) for a, b in zip(after["counts"], old, strict=False))
    gained = Histogram(tuple(after["bounds"]), delta, sum(delta), 0.0)
    return gained.quantile(0.5), gained.quantile(0.99)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"≤{seconds * 1000:.2g}ms"
    return f"≤{seconds * 1000:.3g}ms"


def _rate(now: int, then: int, elapsed: float) -> str:
    return f"{max(0, now - then) / elapsed:,.1f}" if elapsed > 0 else "-"


def render(previous: Status | None, current: Status, elapsed: float) -> Any:
    """One frame of ``kerna top``: a rich renderable (a titled table; with resilience
    targets in ``current``, a second table of them under it).

    Args:
        previous: the status read an interval ago (None: rates are not known yet).
        current: the status read now (``/admin/status``'s body).

    The title names the node, its members, the handlers running and the dead letters
    its store keeps (``kerna deadletters list`` shows them).
        elapsed: seconds between the two reads.
    """
    from rich.table import Table

    ready = "ready" if current.get("ready") else "not ready"
    members = current.get("members")
    store = current.get("dead_letter_store") or {}
    title = (
        f"node {current.get('node')} (cluster {current.get('cluster')}) {ready}"
        f" · {len(members) if members is not None else '-'} members"
        f" · {current.get('handlers_running', 0)} handlers running"
        f" · {store.get('kept', 0)} dead letters kept"
    )
    table = Table(title=title, title_justify="left", expand=False)
    for header in (
        "TYPE",
        "ACTIVE",
        "QUEUED",
        "IN FLIGHT",
        "PENDING",
        "HANDLED/s",
        "FAILED/s",
        "DEAD",
        "WAIT p50",
        "WAIT p99",
        "HANDLE p50",
        "HANDLE p99",
    ):
        table.add_column(header, justify="left" if header == "TYPE" else "right")
    before_types = (previous or {}).get("types", {})
    before_timings = (previous or {}).get("timings", {})
    timings = current.get("timings", {})
    for name, stats in sorted(current.get("types", {}).items()):
        old = before_types.get(name)
        handled = _rate(stats["handled"], old["handled"], elapsed) if old else "-"
        failed = _rate(stats["failed"], old["failed"], elapsed) if old else "-"
        timing, old_timing = timings.get(name), before_timings.get(name)
        wait = _interval_quantiles(old_timing and old_timing["wait"], timing and timing["wait"])
        handling = _interval_quantiles(
            old_timing and old_timing["handling"], timing and timing["handling"]
        )
        table.add_row(
            name,
            str(stats["active"]),
            str(stats["queued"]),
            str(stats.get("in_flight", 0)),
            str(stats.get("pending", stats["queued"])),
            handled,
            failed,
            str(stats["dead_letters"]),
            _ms(wait[0]),
            _ms(wait[1]),
            _ms(handling[0]),
            _ms(handling[1]),
        )
    targets = current.get("resilience") or {}
    if not targets:
        return table
    from rich.console import Group

    return Group(table, _targets(targets, (previous or {}).get("resilience") or {}, elapsed))


def _targets(targets: Status, before: Status, elapsed: float) -> Any:
    """The resilience targets' table: breaker state, openings, and rates."""
    from rich.table import Table

    table = Table(title="resilience targets", title_justify="left", expand=False)
    for header in ("TARGET", "BREAKER", "OPENED", "REJECTED/s", "RETRIES/s", "FALLBACKS/s"):
        table.add_column(header, justify="left" if header == "TARGET" else "right")
    for name, stats in sorted(targets.items()):
        old = before.get(name)
        breaker = stats.get("breaker")
        old_breaker = old and old.get("breaker")
        table.add_row(
            name,
            breaker["state"] if breaker else "-",
            str(breaker["opened"]) if breaker else "-",
            _rate(breaker["rejected"], old_breaker["rejected"], elapsed)
            if breaker and old_breaker
            else "-",
            _rate(stats["retries"], old["retries"], elapsed) if old else "-",
            _rate(stats["fallbacks"], old["fallbacks"], elapsed) if old else "-",
        )
    return table


def _read(args: argparse.Namespace) -> tuple[Status | None, str | None]:
    from ._node_cli import call_node

    status, body = call_node(args, "GET", "/admin/status", None)
    if status != 200:
        if isinstance(body, dict) and "message" in body:
            return None, f"{body.get('error', 'error')}: {body['message']}"
        return None, f"HTTP {status}"
    return body, None


def _top(args: argparse.Namespace) -> int:
    if not (args.interval > 0):
        print(f"kerna top: --interval must be > 0 seconds, got {args.interval}", file=sys.stderr)
        return 2
    try:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text
    except ImportError:
        print("kerna top: needs rich (the cli extra): pip install 'kerna[cli]'", file=sys.stderr)
        return 2
    # a pipe gets the whole table, not 80 columns of it
    console = Console(width=None if sys.stdout.isatty() else 160)
    previous, error = _read(args)
    then = time.monotonic()
    if args.once:
        if previous is None:
            print(f"kerna top: {error}", file=sys.stderr)
            return 1
        time.sleep(args.interval)
        current, error = _read(args)
        if current is None:
            print(f"kerna top: {error}", file=sys.stderr)
            return 1
        console.print(render(previous, current, time.monotonic() - then))
        return 0
    try:
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(args.interval)
                current, error = _read(args)
                now = time.monotonic()
                if current is None:
                    live.update(Text(f"kerna top: {error} (retrying)"), refresh=True)
                else:
                    live.update(render(previous, current, now - then), refresh=True)
                previous, then = current, now
    except KeyboardInterrupt:
        return 0
