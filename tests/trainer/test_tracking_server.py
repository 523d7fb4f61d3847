"""The embedded MLflow UI stops on SIGTERM sent to the server itself, not only on SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from feedback.settings import CommonSettings
from flywheel.stack.supervise import free_port
from flywheel.stack.tracking_server import mlflow_ui_process


def test_the_mlflow_ui_stops_on_sigterm(tmp_path: Path) -> None:
    settings = CommonSettings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    ui = mlflow_ui_process(settings, free_port(), tmp_path / "mlflow.log").start().wait_ready()
    try:
        assert ui.proc is not None
        guard = ui.proc.pid  # the process guard; the server is its one child
        server = int(Path(f"/proc/{guard}/task/{guard}/children").read_text().split()[0])
        os.kill(server, signal.SIGTERM)
        ui.proc.wait(timeout=30)  # the guard exits with the server
        assert ui.proc.returncode == 0, ui.log_tail()
    finally:
        ui.stop()
