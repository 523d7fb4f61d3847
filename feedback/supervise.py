"""Child processes of the embedded stack: start, wait until ready, stop cleanly.

The broker (here), the engine (``serving``) and the MLflow UI (``trainer``) are all
external programs in the embedded stack; this one class gives them the same lifecycle so
``flywheel up`` and the test fixtures treat them alike.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


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


class ProcessFailed(RuntimeError):
    """A child process exited or never became ready; the message carries the tail of its log."""


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
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
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
