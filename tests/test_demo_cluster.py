"""``kerna demo --nodes 3``: the document pipeline across three ``kerna node``
processes on a throwaway etcd, one node killed with SIGKILL midway; the run still
accounts for every document, with the embedded demo's counts, and reports the failover.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from kerna.demo import DemoReport, run_demo
from kerna.testing import DATA_ROOT_ENV, EtcdMember, data_root

ROOT = Path(__file__).resolve().parent.parent
LEASE_TTL = 1.5


def _leftovers(root: Path) -> list[str]:
    """Processes whose command line names ``root``, the directory this test's demo made
    its temporary directory in (another demo running meanwhile has its own)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(root) in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture
def other_demo() -> Iterator[None]:
    """Another demo running meanwhile (a stand-in): a process whose command line names
    its temporary directory, and that directory; neither is this test's to account for."""
    root = data_root("kerna-demo-")
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.sleep(120)", str(root / "node.toml")]
    )
    try:
        yield
    finally:
        other.kill()
        other.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.usefixtures("other_demo")
def test_the_cluster_demo_survives_a_killed_node_with_the_embedded_demos_counts(
    etcd_server: EtcdMember,  # etcd is installed (else a skip, or a failure under CI)
    tmp_path: Path,
) -> None:
    docs = 600
    root = tmp_path / "data"  # the demo's temporary directories: apart from other runs'
    root.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "kerna", "demo", "--nodes", "3", "--docs", str(docs), "--json",
         "--lease-ttl", str(LEASE_TTL), "--stall-rate", "0.01"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, DATA_ROOT_ENV: str(root)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = msgspec.json.decode(proc.stdout, type=DemoReport)
    embedded = run_demo(docs, stall_rate=0.01)
    assert report.lost == 0
    assert report.completed + report.failed == docs
    same = ("completed", "failed", "aggregated", "choreography_failed", "orchestrated",
            "orchestration_errors", "orchestration_timeouts", "injected_corrupt",
            "injected_stalls", "dead_letters", "late_replies")  # fmt: skip
    assert {k: getattr(report, k) for k in same} == {k: getattr(embedded, k) for k in same}
    # The nodes run no sentiment step (the embedded demo's Resilience middleware is not
    # configured on them): the embedded run's down shard failures are its only extra ones.
    assert embedded.inference is not None
    assert report.inference is None
    assert report.degraded == 0
    assert report.handler_failures == embedded.handler_failures - embedded.inference.failed
    assert report.injected_corrupt > 0
    assert report.injected_stalls > 0
    assert (report.nodes, report.killed) == (3, "n2")
    # served again by a survivor once the killed node's lease ran out, not before
    assert report.failover_s is not None
    assert LEASE_TTL / 3 < report.failover_s < LEASE_TTL + 3
    # the summary says so
    plain = subprocess.run(
        [sys.executable, "-c", "import sys, msgspec; from kerna.demo import DemoReport, "
         "format_plain; sys.stdout.write(format_plain(msgspec.json.decode(sys.stdin.read(), "
         "type=DemoReport)))"],
        input=proc.stdout, capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert "3 nodes" in plain.stdout
    assert "n2 killed (SIGKILL) midway" in plain.stdout
    assert f"failover      {report.failover_s:.2f} s" in plain.stdout
    # etcd and the nodes were stopped (their command lines name the demo's temporary
    # directory: the nodes' configs, etcd's write-ahead log), the directory removed
    assert _leftovers(root) == []
    assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--nodes", "3", "--docs", "1"], "argument --docs: --nodes needs at least 2"),
        (["--lease-ttl", "2"], "argument --lease-ttl: only with --nodes"),
        (["--nodes", "0"], "argument --nodes: expected a positive integer"),
    ],
)
def test_bad_cluster_demo_arguments_exit_2_naming_the_argument(args: list[str], error: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kerna", "demo", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert error in proc.stderr
