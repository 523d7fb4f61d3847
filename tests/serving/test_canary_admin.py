"""The canary through the gateway's admin routes and the CLI, and chats routed by it.

The real gateway app (no engine: its versions are base-model versions, which route without
one); a chat then fails at the engine, and the per-version error counter shows which version
each request was sent to: the canary for users in its share, both for their pairs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from feedback.db.session import make_engine, session_factory
from flywheel.cli.main import app as cli
from registry.model_versions import CHAMPION
from registry.promotion import Promotion
from serving.canary import in_canary
from tests.serving.conftest import Gateway
from tests.serving.test_api import envelope

CHAT = {"model": "flywheel", "messages": [{"role": "user", "content": "hi"}]}


def with_versions(gateway: Gateway, versions: int = 3) -> Promotion:
    """Register base-model versions in the gateway's registry and make version 1 champion (audited)."""
    settings = gateway.settings
    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri)
    client.create_registered_model(settings.registered_model)
    for _ in range(versions):
        client.create_model_version(settings.registered_model, "file:///nowhere", tags={"adapter": "none"})
    registry = Promotion(settings.resolved_mlflow_uri, settings.registered_model,
                         session_factory(make_engine(settings.resolved_database_url)))
    registry._move(CHAMPION, "1", action="bootstrap", actor="system", reason=None)
    return registry


def errors(version: str) -> float:
    return REGISTRY.get_sample_value("flywheel_chat_errors_total", {"model_version": version}) or 0.0


def test_admin_canary_routes_chats_and_answers_history(gateway: Gateway) -> None:
    with_versions(gateway)
    assert envelope(gateway.post("/admin/models/2/canary", {"percent": 50}), 403)
    assert "percent" in envelope(gateway.post("/admin/models/2/canary", {"percent": 0}, app="ops"), 400)["message"]
    assert envelope(gateway.post("/admin/models/2/canary", {"percent": 101}, app="ops"), 400)
    assert "champion" in envelope(gateway.post("/admin/models/1/canary", {"percent": 5}, app="ops"), 409)["message"]
    assert "no canary" in envelope(gateway.post("/admin/models/canary/stop", None, app="ops"), 409)["message"]

    started = gateway.post("/admin/models/2/canary", {"percent": 50, "reason": "try it"}, app="ops")
    assert started.status_code == 200, started.text
    body = started.json()
    assert (body["version"], body["percent"], body["champion"], body["serving"]) == ("2", 50.0, "1", True)
    during = datetime.now(UTC)

    inside = next(u for u in (f"u{i}" for i in range(100)) if in_canary(u, "2", 50))
    outside = next(u for u in (f"u{i}" for i in range(100)) if not in_canary(u, "2", 50))
    before: dict[str, float] = {v: errors(v) for v in ("1", "2")}

    def chat(user: str, **extra: Any) -> None:
        envelope(gateway.post("/v1/chat/completions", {**CHAT, "user": user, **extra}), 503)  # no engine

    chat(inside)
    chat(inside, stream=True)
    assert (errors("1") - before["1"], errors("2") - before["2"]) == (0, 2)
    chat(outside)
    chat(outside, flywheel={"pairwise": True})
    assert (errors("1") - before["1"], errors("2") - before["2"]) == (2, 2)
    chat(inside, flywheel={"pairwise": True})  # champion against canary: both asked
    assert (errors("1") - before["1"], errors("2") - before["2"]) == (3, 3)

    stopped = gateway.post("/admin/models/canary/stop", {"reason": "done"}, app="ops")
    assert stopped.status_code == 200 and stopped.json() == {"stopped": "2"}
    chat(inside)
    assert errors("2") - before["2"] == 3 and errors("1") - before["1"] == 4

    at = gateway.get("/admin/models/history/at", app="ops", params={"time": during.isoformat(), "user": inside})
    assert at.status_code == 200, at.text
    answer = at.json()
    assert (answer["champion"], answer["canary"], answer["canary_percent"], answer["user_version"]) == (
        "1", "2", 50.0, "2")
    assert answer["canary_since"].endswith(("Z", "+00:00"))
    now = gateway.get("/admin/models/history/at", app="ops", params={"time": datetime.now(UTC).isoformat(),
                                                                     "user": inside}).json()
    assert (now["champion"], now["canary"], now["user_version"]) == ("1", None, "1")
    early = (during - timedelta(days=1)).isoformat()
    assert gateway.get("/admin/models/history/at", app="ops", params={"time": early}).json()["champion"] is None
    assert envelope(gateway.get("/admin/models/history/at", app="ops", params={"time": "yesterday"}), 400)
    listed = gateway.get("/admin/models", app="ops").json()
    assert [(v["version"], v["aliases"], v["live"], v["against_champion"]) for v in listed] == [
        ("1", ["champion"], None, None), ("2", [], None, None), ("3", [], None, None)]  # no answer was recorded
    moves = gateway.get("/admin/models/history", app="ops").json()
    assert [(m["action"], m["to_version"], m["actor"]) for m in moves[:2]] == [
        ("canary_stop", "2", "app:ops"), ("canary", "2", "app:ops")]


def test_canary_routes_are_declared(gateway: Gateway) -> None:
    paths = gateway.client.get("/openapi.json").json()["paths"]
    for method, path, codes in [("post", "/admin/models/{version}/canary", {"200", "400", "401", "403", "409"}),
                                ("post", "/admin/models/canary/stop", {"200", "400", "401", "403", "409"}),
                                ("get", "/admin/models/history/at", {"200", "400", "401", "403"}),
                                ("get", "/admin/models/canary", {"200", "401", "403"})]:
        responses = paths[path][method]["responses"]
        assert codes <= set(responses), (path, set(responses))
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components/schemas/")


def test_cli_canary_and_history_at(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    if not gateway.settings.resolved_database_url.startswith("sqlite"):
        pytest.skip("the CLI path is the same on both databases; once is enough")
    with_versions(gateway)
    for name, value in (("DATABASE_URL", gateway.settings.resolved_database_url),
                        ("MLFLOW_TRACKING_URI", gateway.settings.resolved_mlflow_uri),
                        ("REGISTERED_MODEL", gateway.settings.registered_model)):
        monkeypatch.setenv(f"FLYWHEEL_{name}", value)
    runner = CliRunner()
    assert "no canary is running" in runner.invoke(cli, ["models", "canary"]).output
    assert runner.invoke(cli, ["models", "canary", "2"]).exit_code == 1  # no --percent
    assert runner.invoke(cli, ["models", "canary", "2", "--percent", "10", "--stop"]).exit_code == 1
    started = runner.invoke(cli, ["models", "canary", "2", "--percent", "10", "--actor", "cli:ann"])
    assert started.exit_code == 0 and "10 % of end users" in started.output, started.output
    refused = runner.invoke(cli, ["models", "canary", "1", "--percent", "10"])
    assert refused.exit_code == 1 and "is the champion" in refused.output
    status = runner.invoke(cli, ["models", "canary"], env={"COLUMNS": "200"})
    assert "version 2 for 10 % of end users" in status.output and "the rule says: continue" in status.output
    listed = runner.invoke(cli, ["models", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "mean ms" in listed.output and "canary" in listed.output, listed.output
    during = datetime.now(UTC).isoformat()
    user = next(u for u in (f"u{i}" for i in range(1000)) if in_canary(u, "2", 10))
    assert runner.invoke(cli, ["models", "canary", "--stop", "--actor", "cli:ann"]).exit_code == 0
    moves = runner.invoke(cli, ["models", "history"], env={"COLUMNS": "200"})
    assert "canary_stop" in moves.output and "10 %" in moves.output
    at = runner.invoke(cli, ["models", "history", "--at", during, "--user", user], env={"COLUMNS": "200"})
    assert at.exit_code == 0, at.output
    assert "champion: version 1" in at.output and "canary: version 2 for 10 %" in at.output
    assert f"user {user!r} was answered by version 2" in at.output
    assert runner.invoke(cli, ["models", "history", "--at", "soon"]).exit_code == 1
