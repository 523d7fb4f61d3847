"""Ops review: release makes a quarantined vote training data, purge deletes it; both audited, over the CLI
and the admin endpoints (403 for app keys, 401 without one; bad input is a 4xx, never a 500)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from feedback import quarantine
from feedback.apps import Caller, create_app, find_caller
from feedback.db.models import AdminAction
from feedback.db.session import make_engine, session_factory, transaction
from feedback.filters import Pipeline
from flywheel.cli.main import app as cli
from serving.errors import install_error_handlers
from serving.routers import admin_quarantine
from tests.conftest import EventBuilder
from tests.feedback.filtering import after, filter_settings, store, verdicts


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


@dataclass
class StubGateway:
    """The part of GatewayState the admin router uses: a real session factory and key lookup."""

    sessions: sessionmaker[Session]

    async def authenticate(self, key: str) -> Caller | None:
        with self.sessions() as session:
            return find_caller(session, key)


@pytest.fixture
def keys(sessions: sessionmaker[Session]) -> dict[str, str]:
    with transaction(sessions) as session:
        _, admin = create_app(session, "ops", admin=True)
        app, user = create_app(session, "chat-app")
        app_id = app.id
    return {"admin": admin, "user": user, "app_id": str(app_id)}


@pytest.fixture
def client(sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    api = FastAPI()
    api.include_router(admin_quarantine.router)
    install_error_handlers(api)
    api.state.gateway = StubGateway(sessions)
    with TestClient(api) as test_client:
        yield test_client


def quarantine_two(sessions: sessionmaker[Session], build: EventBuilder, app_id: int) -> tuple[str, str, str]:
    """A too-fast vote on a real answer, a vote on an unknown answer; returns their ids and the answer's."""
    answer = build.completion(app_id)
    fast = build.thumbs(app_id, answer.response_id, user_id="eager", rating="down")
    orphan = build.thumbs(app_id, build.completion(app_id).response_id, user_id="lost")
    store(sessions, Pipeline(filter_settings(timing_min_ms=60_000)), [answer, fast, orphan])
    return fast.event_id, orphan.event_id, answer.response_id


def audit(sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    with sessions() as session:
        return [(a.actor, a.action, a.target) for a in session.scalars(sa.select(AdminAction).order_by(AdminAction.id))]


def test_admin_endpoints_release_and_purge(sessions: sessionmaker[Session], client: TestClient,
                                           keys: dict[str, str], build: EventBuilder) -> None:
    fast, orphan, response_id = quarantine_two(sessions, build, int(keys["app_id"]))
    admin = {"Authorization": f"Bearer {keys['admin']}"}

    assert client.get("/admin/quarantine").status_code == 401
    assert client.get("/admin/quarantine", headers={"Authorization": f"Bearer {keys['user']}"}).status_code == 403
    assert client.post(f"/admin/quarantine/{fast}/release",
                       headers={"Authorization": f"Bearer {keys['user']}"}).status_code == 403

    listed = client.get("/admin/quarantine", params={"reason": "too_fast"}, headers=admin).json()["items"]
    assert [i["event_id"] for i in listed] == [fast]
    shown = client.get(f"/admin/quarantine/{fast}", headers=admin).json()
    assert shown["reasons"] == ["too_fast"] and shown["payload"]["response_id"] == response_id

    assert client.get("/admin/quarantine/evt_nope", headers=admin).status_code == 404
    assert client.get("/admin/quarantine/bad id!", headers=admin).status_code == 400
    assert client.get("/admin/quarantine", params={"reason": "Bad%"}, headers=admin).status_code == 400
    assert client.post(f"/admin/quarantine/{fast}/release", json={"weight": 7}, headers=admin).status_code == 400
    refused = client.post(f"/admin/quarantine/{orphan}/release", headers=admin)
    assert refused.status_code == 409 and "never stored" in refused.json()["error"]["message"]

    released = client.post(f"/admin/quarantine/{fast}/release", json={"weight": 0.5, "note": "human after all"},
                           headers=admin)
    app_id = int(keys["app_id"])
    assert released.json() == {"event_id": fast, "app_id": app_id, "released": True, "weight": 0.5}
    assert client.post(f"/admin/quarantine/{fast}/release", headers=admin).status_code == 404
    purged = client.delete(f"/admin/quarantine/{orphan}", headers=admin).json()
    assert purged == {"event_id": orphan, "app_id": app_id, "purged": True}

    assert verdicts(sessions) == {fast: []}
    with sessions() as session:  # training data, read the way a trainer would: plain SQL
        row = session.execute(sa.text("SELECT response_id, rating, weight FROM feedback WHERE event_id = :e"),
                              {"e": fast}).one()
    assert tuple(row) == (response_id, "down", 0.5)
    assert audit(sessions) == [("app:ops", "quarantine.release", fast), ("app:ops", "quarantine.purge", orphan)]


def test_released_and_purged_events_stay_put(sessions: sessionmaker[Session], make_app: Callable[[str], int],
                                             db_url: str, build: EventBuilder) -> None:
    """A purged event re-delivered is a no-op; a released vote of a rater flagged later stays training data."""
    app_id = make_app(db_url)
    fast, orphan, response_id = quarantine_two(sessions, build, app_id)
    with transaction(sessions) as session:
        quarantine.release(session, fast, "cli:tester")
        quarantine.purge(session, orphan, "cli:tester")
    pipeline = Pipeline(filter_settings(bot_min_votes=3))
    answers = [build.completion(app_id) for _ in range(3)]
    same = [build.thumbs(app_id, c.response_id, user_id="eager", rating="down", **after(c, 5)) for c in answers]
    result = store(sessions, pipeline, [*answers, *same, build.thumbs(app_id, response_id, event_id=orphan)])
    assert result.duplicates == 1
    got = verdicts(sessions)
    assert got[fast] == [] and orphan not in got
    assert all(got[e.event_id] == ["bot_pattern"] for e in same)


def test_cli_quarantine_commands(sessions: sessionmaker[Session], db_url: str, make_app: Callable[[str], int],
                                 build: EventBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the CLI path is the same on both databases; once is enough")
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", db_url)
    fast, orphan, _ = quarantine_two(sessions, build, make_app(db_url))
    runner = CliRunner()
    listed = runner.invoke(cli, ["feedback", "quarantine", "list", "--reason", "unknown_response"])
    assert listed.exit_code == 0 and orphan[:12] in listed.output and fast[:12] not in listed.output
    shown = runner.invoke(cli, ["feedback", "quarantine", "show", fast])
    assert shown.exit_code == 0 and "too_fast" in shown.output
    missing = runner.invoke(cli, ["feedback", "quarantine", "release", "evt_missing"])
    assert missing.exit_code == 1 and "no quarantined event" in missing.output
    assert runner.invoke(cli, ["feedback", "quarantine", "release", fast, "--actor", "cli:ann"]).exit_code == 0
    assert runner.invoke(cli, ["feedback", "quarantine", "purge", orphan, "--actor", "cli:ann"]).exit_code == 0
    assert audit(sessions) == [("cli:ann", "quarantine.release", fast), ("cli:ann", "quarantine.purge", orphan)]


def test_an_event_id_two_apps_used_needs_its_app(sessions: sessionmaker[Session], client: TestClient, db_url: str,
                                                  keys: dict[str, str], make_app: Callable[..., int],
                                                  build: EventBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Event ids are unique per app: review asks which app's event is meant, over HTTP and the CLI."""
    apps = [int(keys["app_id"]), make_app(db_url)]
    lost = [build.thumbs(app, build.completion(app).response_id, event_id="same-id") for app in apps]
    store(sessions, Pipeline(filter_settings()), lost)
    admin = {"Authorization": f"Bearer {keys['admin']}"}

    ambiguous = client.get("/admin/quarantine/same-id", headers=admin)
    assert ambiguous.status_code == 409 and "app_id" in ambiguous.json()["error"]["message"]
    shown = client.get("/admin/quarantine/same-id", params={"app_id": apps[1]}, headers=admin)
    assert shown.json()["app_id"] == apps[1]
    purged = client.delete("/admin/quarantine/same-id", params={"app_id": apps[0]}, headers=admin)
    assert purged.json() == {"event_id": "same-id", "app_id": apps[0], "purged": True}
    assert client.get("/admin/quarantine/same-id", headers=admin).json()["app_id"] == apps[1]  # one left

    if db_url.startswith("sqlite"):  # the CLI takes the same --app
        monkeypatch.setenv("FLYWHEEL_DATABASE_URL", db_url)
        store(sessions, Pipeline(filter_settings()), [lost[0].model_copy(update={"event_id": "other-id"}),
                                                      lost[1].model_copy(update={"event_id": "other-id"})])
        runner = CliRunner()
        refused = runner.invoke(cli, ["feedback", "quarantine", "purge", "other-id"])
        assert refused.exit_code == 1 and "app_id" in refused.output
        assert runner.invoke(cli, ["feedback", "quarantine", "purge", "other-id", "--app", str(apps[0])]).exit_code == 0
