"""The real stack for end-to-end tests: Tansu, vLLM (tiny model), MLflow store, gateway, worker.

The engine is started once per test session, as the session begins (tests/conftest.py: about a
minute and a half on a 2-core AVX2 machine, which the tests without an engine overlap; these modules
run last); everything else is cheap and started per module in its own data dir and topic, so
modules do not see each other's events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from feedback.apps import create_app as create_api_app
from feedback.db.session import make_engine, session_factory, transaction, upgrade
from feedback.filters.settings import FilterSettings
from feedback.producer import ensure_topic
from feedback.worker import Worker
from flywheel.stack.services import child_env
from flywheel.stack.supervise import ManagedProcess, free_port, wait_for
from serving.app import create_app
from serving.settings import ServingSettings
from trainer.config import TrainerSettings
from trainer.registry import Registry


@pytest.fixture(scope="session")
def engine(starting_engine: tuple[ManagedProcess, str]) -> str:
    """The session's engine (tests/conftest.py started it with the session's first test), once it answers."""
    process, url = starting_engine
    process.wait_ready()
    return url


@pytest.fixture(scope="module")
def filter_settings() -> FilterSettings:
    """The worker's filter thresholds; a test module overrides this fixture to change them."""
    return FilterSettings()


@dataclass
class Stack:
    settings: ServingSettings
    trainer_settings: TrainerSettings
    gateway: str
    key: str
    other_key: str
    admin_key: str

    def env(self) -> dict[str, str]:
        """The FLYWHEEL_* environment under which the CLI sees this stack."""
        return child_env(self.settings)


class _Gateway(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process owns its signals
        pass


@pytest.fixture(scope="module")
def stack(
    broker: str, engine: str, tiny_model: Path, filter_settings: FilterSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("data")
    common = {
        "data_dir": data_dir,
        "kafka_bootstrap_servers": broker,
        "kafka_topic": f"e2e-{time.time_ns()}",
        "base_model": tiny_model,
        "engine_url": engine,
    }
    settings = ServingSettings(**common, port=free_port(), swap_poll_seconds=0.3)
    trainer_settings = TrainerSettings(**{k: v for k, v in common.items() if k != "engine_url"})
    upgrade(settings.resolved_database_url)
    ensure_topic(settings)
    sessions = session_factory(make_engine(settings.resolved_database_url))
    Registry(trainer_settings, sessions).ensure_bootstrap()
    with transaction(sessions) as session:
        keys = [create_api_app(session, name, admin=name == "ops")[1] for name in ("app", "other", "ops")]

    stop = threading.Event()
    worker = threading.Thread(target=Worker(settings, filter_settings).run, args=(stop,), name="worker", daemon=True)
    worker.start()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_config=None)
    server = _Gateway(config)
    serving = threading.Thread(target=server.run, name="gateway", daemon=True)
    serving.start()
    gateway = f"http://127.0.0.1:{settings.port}"
    wait_for(lambda: httpx.get(f"{gateway}/readyz", timeout=2).is_success, 60, "gateway")
    yield Stack(settings, trainer_settings, gateway, *keys)
    server.should_exit = True
    stop.set()
    serving.join(30)
    worker.join(30)
