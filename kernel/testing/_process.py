"""Processes for tests: free ports, temporary data directories, and the signals a fault
test sends (SIGSTOP/SIGCONT, kill -9, wait for exit).

``ServerProcess`` is what each real server of ``kerna.testing`` (etcd, nats-server,
redis-server) is built on: one child process, its log file, and control methods that
act on its PID. Every child started here is killed by an exit hook if a crashed test
session left it running, and when this process is terminated (SIGTERM, which Python
otherwise answers by ending without its exit hooks: a CI timeout, a ``kill``), unless
something else handles SIGTERM here. Only the standard library is used: a benchmark
or a script may use these without pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "DATA_ROOT_ENV",
    "ServerNotInstalled",
    "ServerProcess",
    "data_root",
    "find_server",
    "free_ports",
    "kill_process",
    "pause_process",
    "resume_process",
    "wait_for_exit",
    "wait_until",
]

_running: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _kill_leftovers_on_sigterm() -> None:
    """From the first server started (in the main thread), SIGTERM kills the servers
    this process started before it ends the process as before; a SIGTERM handler of
    anyone else's (asyncio's ``add_signal_handler``, an application's) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: object) -> None:
    # Only kill (no wait: the interrupted code may hold a Popen's wait lock); the
    # orphans' parent reaps them. Then the default action: this process ends by SIGTERM.
    for proc in list(_running):
        with contextlib.suppress(OSError):
            proc.kill()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


class ServerNotInstalled(RuntimeError):
    """The binary of a server is not installed here (the message says how to install it).

    The pytest fixtures of ``kerna.testing`` turn it into a skip, or a failure under
    ``KERNA_REQUIRE_SERVERS=1``.
    """


def find_server(name: str, package: str, *fallbacks: str) -> str:
    """The path of the executable ``name``: the one ``KERNA_<NAME>_BIN`` names when that
    is set (``KERNA_ETCD_BIN``, ``KERNA_NATS_SERVER_BIN``, ``KERNA_REDIS_SERVER_BIN``:
    a binary of a version or place of your own), else ``name`` on ``PATH``, else the
    first of ``fallbacks`` that exists (Debian puts nats-server in /usr/sbin, off a
    user's ``PATH``).

    Raises:
        ServerNotInstalled: it is not executable; the message names ``package`` (or the
            variable that names a missing file).
    """
    variable = f"KERNA_{name.upper().replace('-', '_')}_BIN"
    chosen = os.environ.get(variable)
    if chosen:
        if os.access(chosen, os.X_OK):
            return chosen
        raise ServerNotInstalled(f"{name}: {variable}={chosen} is not an executable file")
    for candidate in (shutil.which(name), *fallbacks):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerNotInstalled(
        f"{name} is not installed: apt-get install {package} (or set {variable})"
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct 127.0.0.1 ports that nothing listens on right now.

    Another process may take one before the caller binds it: servers started here say so
    in their log, and the ones with a single port retry on a new one.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


DATA_ROOT_ENV = "KERNA_DATA_ROOT"
"""The environment variable naming the directory ``data_root`` makes its directories in
(instead of /dev/shm): a run that must find what it left behind, apart from other runs'
(``tests/test_demo_cluster.py`` gives ``kerna demo --nodes`` a directory of its own)."""


def data_root(prefix: str) -> Path:
    """A new temporary directory: in ``$KERNA_DATA_ROOT`` when that is set, else on
    /dev/shm when it is there and writable (a server's fsyncs then cost nothing, which
    keeps tests fast), else in the system's temp dir.

    Raises:
        NotADirectoryError: ``$KERNA_DATA_ROOT`` is set but is not a directory.
    """
    chosen = os.environ.get(DATA_ROOT_ENV)
    if chosen:
        if not Path(chosen).is_dir():
            raise NotADirectoryError(f"{DATA_ROOT_ENV}={chosen!r} is not a directory")
        return Path(tempfile.mkdtemp(prefix=prefix, dir=chosen))
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` every 10 ms until it is true; returns the seconds it took.

    For a fixture's set-up and a process's state, which have no event to wait on.

    Raises:
        TimeoutError: still false after ``timeout`` seconds (the message names ``what``).
    """
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def _state(pid: int) -> str:
    """The process's state letter from /proc ('' when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def pause_process(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and wait until it is stopped: it keeps its sockets open and answers
    nothing (a hung process, a long GC pause, a VM freeze).

    Raises:
        ProcessLookupError: no such process.
        TimeoutError: not stopped within ``timeout``.
    """
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: _state(pid) in ("T", "t", ""), timeout, f"process {pid} stopped")


def resume_process(pid: int, timeout: float = 5.0) -> None:
    """SIGCONT ``pid`` and wait until it runs again.

    Raises:
        ProcessLookupError: no such process.
        TimeoutError: still stopped after ``timeout``.
    """
    os.kill(pid, signal.SIGCONT)
    wait_until(lambda: _state(pid) not in ("T", "t"), timeout, f"process {pid} resumed")


def kill_process(
    target: int | subprocess.Popen[bytes], timeout: float = 10.0, *, reap: bool = True
) -> int | None:
    """``kill -9`` and wait for the exit (reaped, when it is a child); returns its exit
    status (None for a process that is not a child of this one).

    A process that is already gone is not an error. ``reap``: as for ``wait_for_exit``.

    Raises:
        TimeoutError: still there after ``timeout`` (a process in uninterruptible sleep).
    """
    if not isinstance(target, int) and target.poll() is not None:
        _running.discard(target)
        return target.returncode  # reaped: its PID may be another process's by now
    pid = target if isinstance(target, int) else target.pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return wait_for_exit(target, timeout, reap=reap)


def wait_for_exit(
    target: int | subprocess.Popen[bytes], timeout: float, *, reap: bool = True
) -> int | None:
    """Wait until the process has exited; returns its exit status when it is a child of
    this process (a ``Popen``, or the PID of one: then it is reaped too), else None.

    ``reap=False`` for a child that asyncio started (its child watcher collects the
    status; reaping it here would leave ``Process.wait()`` a returncode of 255): the
    wait ends when the process is a zombie or gone, and returns None.

    Raises:
        TimeoutError: still running after ``timeout`` seconds.
    """
    if not isinstance(target, int):
        try:
            code = target.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"process {target.pid}: no exit within {timeout} s") from None
        _running.discard(target)
        return code
    pid = target
    status: list[int] = []

    def gone() -> bool:
        if not reap:
            return _state(pid) in ("", "Z")
        try:
            done, code = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: it is gone when its PID is
            return _state(pid) in ("", "Z")
        if done:
            status.append(os.waitstatus_to_exitcode(code))
        return bool(done)

    wait_until(gone, timeout, f"process {pid} exited")
    return status[0] if status else None


class ServerProcess:
    """One server process: started from ``argv()``, its output in ``log_path``, ready when
    ``ready()`` says so; stopped, killed, paused, resumed and restarted by PID.

    Subclasses (``EtcdMember``, ``NatsServer``, ``RedisServer``) give the command line,
    the readiness probe and the URL. The control methods are synchronous: each is a
    signal and a short bounded wait (``restart`` waits for readiness, up to its timeout).
    """

    name = "server"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> Sequence[str]:
        """The command line that starts the server."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the running server answers (called every 10 ms while it starts)."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """The PID of the running process.

        Raises:
            RuntimeError: it is not running.
        """
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive (a paused one is)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        """Whether the process is stopped by SIGSTOP."""
        return self.running and _state(self.pid) in ("T", "t")

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready.

        Raises:
            RuntimeError: it is already running.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        _kill_leftovers_on_sigterm()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                list(self.argv()), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _running.add(self._proc)

    def wait_ready(self, timeout: float = 15.0) -> float:
        """Wait until ``ready()``; returns the seconds it took.

        Raises:
            RuntimeError: the process exited (the tail of its log is in the message).
            TimeoutError: not ready within ``timeout``.
        """

        def up() -> bool:
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            return self.ready()

        return wait_until(up, timeout, f"{self.name} ready")

    def start(self, timeout: float = 15.0) -> None:
        """Start the process (on the same ports and data as before, if it ran) and wait
        until it is ready.

        Raises:
            RuntimeError: already running, or it exited while starting.
            TimeoutError: not ready within ``timeout``.
        """
        self.spawn()
        self.wait_ready(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (after SIGCONT, so that a paused process handles it) and wait; SIGKILL
        if it is still running after ``timeout``. Reaped. Stopping a stopped server is a
        no-op."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            wait_for_exit(proc, timeout)
        except TimeoutError:
            kill_process(proc)

    def kill(self) -> None:
        """``kill -9`` and reap (a crash: nothing is flushed, no goodbye is sent)."""
        if self._proc is not None:
            kill_process(self._proc)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open and answers nothing."""
        pause_process(self.pid)

    def resume(self) -> None:
        """SIGCONT: undo ``pause``."""
        resume_process(self.pid)

    def restart(self, *, kill: bool = False, timeout: float = 15.0) -> float:
        """Stop the process (``kill -9`` if ``kill``, else gracefully), start it again on
        the same ports and data, and wait until it is ready; returns the seconds taken."""
        start = time.monotonic()
        if kill:
            self.kill()
        else:
            self.stop()
        self.start(timeout)
        return time.monotonic() - start

    def ensure_running(self) -> None:
        """Undo whatever a test did to the process: resume a paused one, start a dead
        one, then wait until it is ready."""
        if self.running:
            if self.paused:
                self.resume()
        else:
            self.spawn()
        self.wait_ready()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the process's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
