"""The embedded stack's process supervision, on real processes: ports checked by name before anything
starts, children that die with their supervisor however it dies, and a dead child restarted with back-off."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from flywheel.stack.supervise import ManagedProcess, PortTaken, Supervisor, check_ports_free, free_port, wait_for


def sleeper(tmp_path: Path, name: str = "sleeper") -> ManagedProcess:
    return ManagedProcess(name, [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / f"{name}.log",
                          ready=lambda: True)


def gone(pid: int) -> bool:
    """No such process, or a zombie waiting for a parent that is not us."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def test_a_taken_port_is_named_before_anything_starts() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        free = free_port()
        with pytest.raises(PortTaken, match=rf"broker \(127.0.0.1:{taken}\)") as refused:
            check_ports_free([("broker", "127.0.0.1", taken), ("gateway", "127.0.0.1", free)])
        assert "gateway" not in str(refused.value)
    check_ports_free([("broker", "127.0.0.1", taken)])  # released: free again


def test_free_ports_are_never_ones_the_kernel_hands_out_to_others() -> None:
    """A port from bind(0) goes back to the pool vLLM's engine draws its own sockets from while it starts: a
    demo's gateway lost its port that way. free_port stays below that pool and never repeats itself."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert all(1024 <= port < ephemeral_low for port in ports)
    assert len(set(ports)) == len(ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # and free to bind


def test_children_die_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from flywheel.stack.supervise import ManagedProcess
        child = ManagedProcess("child", [sys.executable, "-c", "import time; time.sleep(600)"],
                               Path({str(tmp_path / 'child.log')!r}), ready=lambda: True).start()
        print(child.proc.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert not gone(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_for(lambda: gone(child), 10, "the child gone with its parent", interval=0.1)


GRANDPARENT = textwrap.dedent("""
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(grandchild.pid, flush=True)
    time.sleep(600)
""")


def _grandchild(log: Path) -> int:
    """The pid the child printed to its log: a process it started itself, as vLLM starts its engine core."""
    wait_for(lambda: log.exists() and log.read_text().strip() != "", 30, "the grandchild's pid", interval=0.1)
    return int(log.read_text().split()[0])


def test_what_a_child_started_dies_with_it_when_it_is_stopped(tmp_path: Path) -> None:
    child = ManagedProcess("child", [sys.executable, "-c", GRANDPARENT], tmp_path / "child.log",
                           ready=lambda: True).start()
    grandchild = _grandchild(tmp_path / "child.log")
    child.stop()
    wait_for(lambda: gone(grandchild), 15, "the grandchild gone with the child", interval=0.1)


def test_what_a_child_started_dies_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from flywheel.stack.supervise import ManagedProcess
        ManagedProcess("child", [sys.executable, "-c", {GRANDPARENT!r}], Path({str(log)!r}),
                       ready=lambda: True).start()
        time.sleep(600)
    """)])
    grandchild = _grandchild(log)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_for(lambda: gone(grandchild), 15, "the grandchild gone with the supervisor", interval=0.1)


def test_a_dead_child_is_restarted_with_backoff_and_the_others_keep_running(tmp_path: Path) -> None:
    victim, bystander = sleeper(tmp_path, "victim").start(), sleeper(tmp_path, "bystander").start()
    assert victim.proc is not None and bystander.proc is not None
    first, others = victim.proc.pid, bystander.proc.pid
    said: list[str] = []
    supervisor = Supervisor([victim, bystander], backoff=0.2, on_restart=lambda _p, why: said.append(why))
    stop = threading.Event()
    watcher = threading.Thread(target=supervisor.run, args=(stop, 0.1))
    watcher.start()
    try:
        for restarts in (1, 2):
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGKILL)
            wait_for(lambda n=restarts: supervisor.restarts["victim"] == n and victim.alive, 10, "victim restarted",
                     interval=0.05)
        assert victim.proc.pid != first and bystander.alive and bystander.proc.pid == others
        assert supervisor.restarts == {"victim": 2, "bystander": 0}
        assert "victim exited (code -9); restarting it in 0.2s" in said[0]
        assert "restarting it in 0.4s" in said[1]  # back-off doubles
    finally:
        stop.set()
        watcher.join()
        victim.stop()
        bystander.stop()
