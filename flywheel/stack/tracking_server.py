"""The MLflow UI of the embedded stack: a tracking server over the same SQLite store.

Every process of the embedded stack reads and writes the registry directly through the
store URI; this server only lets a person browse runs, metrics, artifacts and versions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from feedback.settings import CommonSettings
from flywheel.stack.supervise import ManagedProcess


def mlflow_ui_process(settings: CommonSettings, port: int, log_path: Path) -> ManagedProcess:
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", settings.resolved_mlflow_uri,
        "--default-artifact-root", (settings.data_dir / "mlartifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    url = f"http://127.0.0.1:{port}/health"
    # The server's job runner (huey consumers) never hears a SIGTERM sent to the server, which then waits
    # for it forever; the UI only browses and runs no jobs, so it goes without one and stops on SIGTERM.
    return ManagedProcess("MLflow UI", argv, log_path, ready=lambda: httpx.get(url, timeout=2).is_success,
                          env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, startup_timeout=120)
