"""The real gateway app (``serving.app.create_app``) on the session broker and each test's database.

No engine runs here: these tests are about the gateway's edge (validation, errors, feedback,
the broker), which answers before any engine is asked. Chat requests that pass validation
get the gateway's own 503 (no champion). The MLflow store is shared by the session.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response  # what Starlette's TestClient answers with

from feedback.apps import create_app as create_api_app
from feedback.db.session import make_engine, session_factory, transaction
from feedback.worker import Worker
from flywheel.stack.supervise import free_port
from serving.app import create_app
from serving.engines import EngineLauncher
from serving.settings import ServingSettings
from tests.feedback.filtering import filter_settings


@dataclass
class Gateway:
    client: TestClient
    settings: ServingSettings
    keys: dict[str, str]
    app_ids: dict[str, int]

    def post(self, path: str, body: Any, app: str = "app", **kw: Any) -> Response:
        return self.client.post(path, json=body, headers=self.auth(app), **kw)

    def get(self, path: str, app: str = "app", **kw: Any) -> Response:
        return self.client.get(path, headers=self.auth(app), **kw)

    def auth(self, app: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[app]}"}


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def gateway_settings(db_url: str, broker: str, data_dir: Path, mlflow_uri: str, **overrides: Any) -> ServingSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": db_url,
        "kafka_bootstrap_servers": broker,
        "kafka_topic": f"gateway.{uuid.uuid4().hex[:12]}",
        "mlflow_tracking_uri": mlflow_uri,
        "registered_model": f"edge-{uuid.uuid4().hex[:8]}",
        "engine_url": f"http://127.0.0.1:{free_port()}",  # nothing listens: no engine in these tests
    }
    return ServingSettings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


def running_gateway(settings: ServingSettings, launcher: EngineLauncher | None = None) -> Iterator[Gateway]:
    """The gateway app with three apps (app, other, ops: admin), served in-process by TestClient; ``launcher``
    starts engines for full-model versions."""
    engine = make_engine(settings.resolved_database_url)
    with transaction(session_factory(engine)) as session:
        made = {name: create_api_app(session, name, admin=name == "ops") for name in ("app", "other", "ops")}
        keys = {name: key for name, (_, key) in made.items()}
        app_ids = {name: app.id for name, (app, _) in made.items()}
    engine.dispose()
    with TestClient(create_app(settings, launcher), raise_server_exceptions=False) as client:
        yield Gateway(client, settings, keys, app_ids)


@pytest.fixture
def gateway(db_url: str, broker: str, tmp_path: Path, mlflow_uri: str) -> Iterator[Gateway]:
    yield from running_gateway(gateway_settings(db_url, broker, tmp_path / "data", mlflow_uri))


@pytest.fixture
def worker(gateway: Gateway) -> Iterator[None]:
    """The real worker on the gateway's topic and database (votes right after the answer are fine here)."""
    running = Worker(gateway.settings, filter_settings(timing_min_ms=0, timing_ms_per_char=0))
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)
