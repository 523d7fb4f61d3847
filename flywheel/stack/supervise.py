"""Child processes of the embedded stack: start, wait until ready, stop cleanly.

The broker (here), the engine (``serving``) and the MLflow UI (``trainer``) are all
external programs in the embedded stack; this one class gives them the same lifecycle so
``flywheel up`` and the test fixtures treat them alike.

Children die with the process that started them, however it dies (``PR_SET_PDEATHSIG``): each
runs in a session of its own (so a Ctrl-C reaches only the supervisor, which stops them in order),
and without that signal a SIGKILLed supervisor used to leave them holding their ports. Each runs
under ``flywheel.stack.process_guard``, which takes the processes the child started down with it. A
``Supervisor`` restarts a child that dies, with back-off, instead of stopping everything.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
_pick = random.SystemRandom()  # not the global generator: a test that seeds it must not make two stacks' ports meet


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range, and not handed out before by this process.

    A port from ``bind(0)`` is free when asked but goes back into the pool the kernel draws from for every
    other ``bind(0)`` and outgoing connection: vLLM's engine binds its internal sockets that way while it starts,
    and once took the port chosen for the gateway that was to start after it. Ports below that range are only
    ever taken by someone asking for them by number.
    """
    try:
        ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    for _ in range(200):
        port = _pick.randint(max(1024, ephemeral_low - 20_000), ephemeral_low - 1)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"found no free port below {ephemeral_low} in 200 tries")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class ProcessFailed(RuntimeError):
    """A child process exited or never became ready; the message carries the tail of its log."""


class PortTaken(ProcessFailed):
    """A port a service of the stack needs is already bound (often by a stack still running): the stack
    cannot start, and says so the way it reports a child that could not start."""


def check_ports_free(ports: Iterable[tuple[str, str, int]]) -> None:
    """Raise ``PortTaken`` naming every ``(service, host, port)`` that cannot be bound, before anything starts.

    Bound with ``SO_REUSEADDR`` like the services do, so a port in TIME_WAIT from the last run counts as free.
    """
    taken = []
    for name, host, port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                taken.append(f"{name} ({host}:{port})")
    if taken:
        raise PortTaken(f"port already in use for: {', '.join(taken)}; is another flywheel stack running?")


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when the thread that started it ends (Linux only).

    The starting thread must live as long as the child (the main thread does). If the parent died
    between fork and prctl the signal would never come, so the child checks and exits at once.
    """
    def arm() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)
    return arm


def wait_for(ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll ``ready`` until it returns true; errors count as "not yet" except ProcessFailed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except ProcessFailed:
            raise
        except Exception:  # probes fail until the service is up
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        ready: Callable[[], bool],
        env: dict[str, str] | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready = ready
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s (log: %s)", self.name, self.log_path)
        with self.log_path.open("ab") as out:
            # Through the guard, which leads the child's process group and ends all of it with the child
            # or with us: a program's own workers (vLLM's engine core) never receive our death signal.
            guarded = [sys.executable, "-m", "flywheel.stack.process_guard", str(os.getpid()), *self.argv]
            self.proc = subprocess.Popen(
                guarded, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        return self

    def wait_ready(self) -> ManagedProcess:
        def up() -> bool:
            if not self.alive:
                raise ProcessFailed(f"{self.name} exited during start-up:\n{self.log_tail()}")
            return self.ready()

        try:
            wait_for(up, self.startup_timeout, self.name)
        except TimeoutError as exc:
            self.stop()
            raise ProcessFailed(f"{exc}:\n{self.log_tail()}") from None
        log.info("%s is ready", self.name)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        log.info("stopping %s", self.name)
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> ManagedProcess:
        return self.start().wait_ready()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()


class Supervisor:
    """Watches running children and restarts one that exits, waiting ``backoff`` seconds doubling to
    ``max_backoff`` between tries; a child that stayed up ``stable_s`` starts again from ``backoff``.

    One dead child no longer takes the stack down: the broker, a worker SIGKILLed mid-batch, the
    engine each come back while the others keep serving (the gateway's outbox holds events meanwhile).
    """

    def __init__(self, procs: Sequence[ManagedProcess], backoff: float = 1.0, max_backoff: float = 60.0,
                 stable_s: float = 60.0, on_restart: Callable[[ManagedProcess, str], None] | None = None) -> None:
        self.procs = list(procs)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_s = stable_s
        self.on_restart = on_restart or (lambda proc, why: log.warning("%s", why))
        self.restarts: dict[str, int] = {proc.name: 0 for proc in procs}
        self._delay = {proc.name: backoff for proc in procs}
        self._started = {proc.name: time.monotonic() for proc in procs}

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Check every ``poll_s`` until ``stop`` is set."""
        while not stop.wait(poll_s):
            for proc in self.procs:
                if not stop.is_set():
                    self._check(proc, stop)

    def _check(self, proc: ManagedProcess, stop: threading.Event) -> None:
        name = proc.name
        if proc.alive:
            if time.monotonic() - self._started[name] > self.stable_s:
                self._delay[name] = self.backoff
            return
        code = proc.proc.returncode if proc.proc is not None else None
        delay = self._delay[name]
        self.on_restart(proc, f"{name} exited (code {code}); restarting it in {delay:.1f}s. Its log ends:\n"
                              f"{proc.log_tail(10)}")
        if stop.wait(delay):
            return
        self._delay[name] = min(delay * 2, self.max_backoff)
        self._started[name] = time.monotonic()
        self.restarts[name] += 1
        try:
            proc.start().wait_ready()
        except ProcessFailed as exc:  # tried again at the next poll, after a longer wait
            self.on_restart(proc, f"{name} did not come back: {exc}")
