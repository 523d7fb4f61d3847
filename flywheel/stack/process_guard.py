"""Run one program of the embedded stack and take everything it started down with it.

``ManagedProcess`` starts each child through this guard (``python -m flywheel.stack.process_guard
PARENT_PID PROGRAM...``). The kernel's parent-death signal (``PR_SET_PDEATHSIG``) reaches only a
direct child, and some programs fork workers of their own: when ``flywheel demo`` was stopped
with SIGTERM, vLLM's engine-core processes outlived it, busy on a core, for as long as nobody
noticed. The guard leads the program's process group; when its supervisor dies, when it is told
to stop, or when the program exits, it ends every other member of the group: SIGTERM, then
SIGKILL after ``GRACE_S``. It exits with the program's status, so supervisors see the program's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

GRACE_S = 10.0
PR_SET_PDEATHSIG = 1


class _Stop(Exception):
    """Raised by the signal handler to leave the wait for the program."""


def _die_with(parent: int, sig: signal.Signals) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:  # the parent died before the signal was armed: it will never come
        sys.exit(1)


def _others_in_group() -> list[int]:
    me, group = os.getpid(), os.getpgid(0)
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                if os.getpgid(int(entry)) == group:
                    members.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def _signal_others(sig: signal.Signals) -> None:
    for pid in _others_in_group():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def _end_group(program: subprocess.Popen[bytes]) -> None:
    """SIGTERM every other member, reap the program, SIGKILL whoever is left after the grace period."""
    _signal_others(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    with contextlib.suppress(subprocess.TimeoutExpired):
        program.wait(GRACE_S)
    while _others_in_group() and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_others(signal.SIGKILL)
    program.wait()


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    _die_with(parent, signal.SIGTERM)  # a signal this guard can catch, unlike the SIGKILL it was started with

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_IGN)
        raise _Stop

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    program = subprocess.Popen(command, preexec_fn=lambda: _die_with(os.getppid(), signal.SIGKILL))
    with contextlib.suppress(_Stop):
        program.wait()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _end_group(program)
    code = program.returncode
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
