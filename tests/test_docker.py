"""docker/ cannot be built here (no Docker engine): check what can be checked by reading it.

Every Flywheel service in the compose file must run a real ``flywheel`` command, every
FLYWHEEL_* variable it sets must be a setting the code reads, and every path the
Dockerfile copies must exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from typer.main import get_command

from flywheel.cli.main import app
from serving.settings import ServingSettings
from trainer.config import TrainerSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def test_compose_runs_the_whole_loop() -> None:
    services = COMPOSE["services"]
    assert {"kafka", "postgres", "mlflow", "vllm", "gateway", "worker", "trainer"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert "--enable-lora" in services["vllm"]["command"]


def test_services_restart_and_report_their_health() -> None:
    """A crashed service comes back by itself; a service waits for what it needs to be healthy."""
    services = COMPOSE["services"]
    for name, service in services.items():
        assert service.get("restart") == ("on-failure" if name == "migrate" else "unless-stopped"), name
        if name not in {"migrate", "trainer"}:  # a one-shot and a batch job have nothing to probe
            assert service["healthcheck"]["test"][0] == "CMD", name
        for needed, how in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if needed == "migrate" else "service_healthy"
            assert how == {"condition": expected}, f"{name} waits for {needed} only to start"


def test_flywheel_services_run_real_commands_with_real_settings() -> None:
    commands = get_command(app).commands  # type: ignore[attr-defined]
    fields = {f"FLYWHEEL_{name.upper()}" for name in {*ServingSettings.model_fields, *TrainerSettings.model_fields}}
    built = {name: svc for name, svc in COMPOSE["services"].items() if "build" in svc}
    assert set(built) == {"migrate", "gateway", "worker", "trainer"}
    for name, service in built.items():
        assert service["command"][0] in commands, f"{name} runs an unknown command {service['command']}"
        unknown = {key for key in service["environment"] if key.startswith("FLYWHEEL_")} - fields
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / source).exists(), source
