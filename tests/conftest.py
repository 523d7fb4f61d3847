"""Shared fixtures: the embedded broker, a fresh migrated database per test, settings, apps, events.

The broker is started once per session (Tansu is memory-only and starts in milliseconds);
tests isolate themselves with their own topic and consumer group. ``db_url`` runs each
test on SQLite and on PostgreSQL, each with a database of its own.

The vLLM engine of the end-to-end tests (``engine``, tests/e2e/conftest.py) is started as the
session begins and the modules that use it run last: its start is a minute and a half of imports on
a 2-core AVX2 machine, which the tests before them overlap instead of waiting for.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from feedback.db.models import App
from feedback.db.session import make_engine, session_factory, transaction, upgrade
from feedback.events import ChatMessage, CompletionEvent, PairwiseEvent, ThumbsEvent, new_root
from feedback.worker_settings import WorkerSettings
from flywheel.stack.broker import tansu_process
from flywheel.stack.engine import vllm_process
from flywheel.stack.supervise import ManagedProcess, free_port
from serving.settings import ServingSettings
from trainer.base_model import build_tiny_model

# The maintenance database of a local PostgreSQL with trust auth; each test gets a database beside it.
POSTGRES_URL = os.environ.get("FLYWHEEL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def _no_root_handler_on_a_closed_stream() -> Iterator[None]:
    """Drop root log handlers whose stream has closed, before and after every test.

    A command run in-process by typer's CliRunner sets up logging on the runner's stderr, which
    closes when the command returns; a worker or gateway thread of a later test logging through
    that handler printed "--- Logging error --- I/O operation on closed file" into the run.
    """
    def drop() -> None:
        root = logging.getLogger()
        for handler in root.handlers[:]:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                root.removeHandler(handler)

    drop()
    yield
    drop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of one embedded Tansu broker for the whole session."""
    port = free_port()
    with tansu_process(port, tmp_path_factory.mktemp("broker") / "tansu.log"):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    """An AUTOCOMMIT engine on the maintenance database (CREATE DATABASE cannot run in a transaction)."""
    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        engine.connect().close()
    except sa.exc.OperationalError as exc:
        # The store must work on PostgreSQL: a missing server fails the run rather than hiding it.
        pytest.fail(f"no PostgreSQL at {POSTGRES_URL} (set FLYWHEEL_TEST_POSTGRES_URL): {exc}")
    yield engine
    engine.dispose()


def fresh_database(request: pytest.FixtureRequest, tmp_path: Path, migrate: bool) -> Iterator[str]:
    """A database of its own of the dialect ``request.param``, migrated or empty, dropped after the test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'flywheel.db'}"
        if migrate:
            upgrade(url)
        yield url
        return
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    name = f"flywheel_test_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database of each dialect, dropped after the test."""
    yield from fresh_database(request, tmp_path, migrate=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each dialect with no tables yet (for tests of the migration itself)."""
    yield from fresh_database(request, tmp_path, migrate=False)


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., WorkerSettings]:
    """Build worker settings on the session broker with a topic and group of this test's own.

    The broker fixture is requested only when the factory is called, so database-only
    tests never start it. The short session timeout matters on Tansu, which holds a group
    join for about half of it.
    """
    suffix = uuid.uuid4().hex[:12]

    def make(**overrides: Any) -> WorkerSettings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "kafka_bootstrap_servers": request.getfixturevalue("broker"),
            "kafka_topic": f"test.events.{suffix}",
            "worker_group_id": f"test-worker-{suffix}",
            "worker_poll_timeout_ms": 200,
            "worker_session_timeout_ms": 2000,
            "worker_heartbeat_interval_ms": 500,
            "worker_retry_backoff_s": 0.2,
        }
        return WorkerSettings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]

    return make


@pytest.fixture
def make_app() -> Callable[[str], int]:
    """Insert an App row into the database at ``url`` and return its id."""

    def make(url: str, name: str | None = None) -> int:
        name = name or f"app-{uuid.uuid4().hex[:8]}"
        engine = make_engine(url)
        try:
            with transaction(session_factory(engine)) as session:
                app = App(name=name, key_hash=hashlib.sha256(name.encode()).hexdigest(), key_prefix=name[:10])
                session.add(app)
                session.flush()
                return app.id
        finally:
            engine.dispose()

    return make


class EventBuilder:
    """Valid events with fresh ids: the shapes the gateway produces."""

    messages = (ChatMessage(role="user", content="What is the capital of France?"),)

    def completion(self, app_id: int, root: str | None = None, side: str | None = None, **kw: Any) -> CompletionEvent:
        root = root or new_root()
        values: dict[str, Any] = {
            "app_id": app_id,
            "response_id": f"resp_{root}" + (f"_{side}" if side else ""),
            "pair_id": f"pair_{root}" if side else None,
            "user_id": "u1",
            "model_version": "1",
            "messages": list(self.messages),
            "answer": "Paris.",
            "latency_ms": 12.5,
        }
        return CompletionEvent(**(values | kw))

    def pair(self, app_id: int) -> tuple[CompletionEvent, CompletionEvent]:
        root = new_root()
        return self.completion(app_id, root, "a"), self.completion(app_id, root, "b")

    def thumbs(self, app_id: int, response_id: str, **kw: Any) -> ThumbsEvent:
        values: dict[str, Any] = {"app_id": app_id, "response_id": response_id, "rating": "up", "user_id": "u1"}
        return ThumbsEvent(**(values | kw))

    def pairwise(self, app_id: int, pair_id: str, **kw: Any) -> PairwiseEvent:
        values: dict[str, Any] = {"app_id": app_id, "pair_id": pair_id, "choice": "a", "user_id": "u1"}
        return PairwiseEvent(**(values | kw))


@pytest.fixture
def build() -> EventBuilder:
    return EventBuilder()


def _uses_engine(item: pytest.Item) -> bool:
    """Whether the test needs the session's engine (the ``engine`` fixture, directly or through another)."""
    return "engine" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules whose tests use the session's engine go last, in their order (``_engine_starts_early``)."""
    engine_modules = {getattr(item, "module", None) for item in items if _uses_engine(item)}
    items.sort(key=lambda item: getattr(item, "module", None) in engine_modules)


@pytest.fixture(scope="session")
def served_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-layer Llama the session's engine serves, under a name no directory's conftest overrides: the engine
    may be started from any directory's first test."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_model(served_tiny_model: Path) -> Path:
    """The model the end-to-end rounds train: the one the engine serves (tests/trainer has its own)."""
    return served_tiny_model


@pytest.fixture(scope="session")
def starting_engine(served_tiny_model: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ManagedProcess, str]]:
    """The session's vLLM engine, started and not waited for (``engine`` waits), and its URL."""
    settings = ServingSettings(engine_port=free_port(), engine_max_model_len=2048, engine_kv_cache_gb=1)
    process = vllm_process(settings, served_tiny_model, tmp_path_factory.mktemp("engine") / "engine.log").start()
    try:
        yield process, settings.resolved_engine_url
    finally:
        process.stop()


@pytest.fixture(scope="session", autouse=True)
def _engine_starts_early(request: pytest.FixtureRequest) -> None:
    """Starts the engine with the session's first test when any test of the session will use it."""
    if any(_uses_engine(item) for item in request.session.items):
        request.getfixturevalue("starting_engine")
