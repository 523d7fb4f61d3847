"""Automatic canary decisions through the real gateway, broker and worker: users' votes roll back or promote.

Answers are recorded as the gateway records them (completion events on the broker, no engine
here), simulated users vote through ``POST /v1/feedback/batch``, the real worker filters and
stores the votes, and the gateway's own timer applies the canary rule: a canary the users
dislike is rolled back, one they prefer is promoted, each an audited move with its evidence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from feedback.events import Event
from feedback.producer import EventProducer
from flywheel.stack.supervise import wait_for
from registry.canary_rule import CanaryRule
from registry.promotion import CANARY_ROLLBACK, CANARY_STOP, Promotion
from serving.canary import in_canary
from tests.conftest import EventBuilder
from tests.serving.conftest import Gateway, gateway_settings, running_gateway
from tests.serving.test_canary_admin import with_versions

RULE = CanaryRule(min_votes_promote=60, min_thumbs_per_arm=20)


@pytest.fixture
def gateway(db_url: str, broker: str, tmp_path: Path, mlflow_uri: str) -> Iterator[Gateway]:
    """The gateway with its canary rule checked every 0.3 s (the ``worker`` fixture runs beside it)."""
    yield from running_gateway(gateway_settings(db_url, broker, tmp_path / "data", mlflow_uri,
                                                canary_check_seconds=0.3, canary_rule=RULE))


def live_traffic(gateway: Gateway, build: EventBuilder, canary_liked: float, canary_picked: float) -> None:
    """40 thumbs on each version's answers and 40 picks between them, from 120 users, each voting once.

    ``canary_liked``: the share of up on the canary's answers (the champion's: 0.6); ``canary_picked``: the
    share of picks for the canary's side (which side is A alternates).
    """
    app_id = gateway.app_ids["app"]
    answers: list[Event] = []
    votes: list[dict[str, Any]] = []
    for i in range(40):
        for version, liked in (("2", canary_liked), ("1", 0.6)):
            user = f"thumbs-{version}-{i}"
            answer = build.completion(app_id, model_version=version, user_id=user,
                                      answer=f"Answer {i} from version {version}: " + "words " * (i % 7))
            answers.append(answer)
            votes.append({"type": "thumbs", "response_id": answer.response_id, "user_id": user,
                          "rating": "up" if i < liked * 40 else "down"})
        side_a, side_b = build.pair(app_id)
        canary_side = "a" if i % 2 == 0 else "b"
        for side in (side_a, side_b):
            mine = side.response_id.endswith(f"_{canary_side}")
            answers.append(side.model_copy(update={"model_version": "2" if mine else "1", "user_id": f"pick-{i}",
                                                   "answer": f"Side {side.response_id[-1]} of pair {i}"}))
        picked_canary = i < canary_picked * 40
        votes.append({"type": "pairwise", "pair_id": side_a.pair_id, "user_id": f"pick-{i}",
                      "choice": canary_side if picked_canary else ("b" if canary_side == "a" else "a")})
    producer = EventProducer(gateway.settings)
    try:
        asyncio.run(producer.send_many(answers))
    finally:
        producer.close()
    sent = gateway.post("/v1/feedback/batch", votes)
    assert sent.status_code == 202, sent.text


def decided(registry: Promotion) -> bool:
    """Whether an automatic decision is in the audit trail (read from the store: the MLflow SQLite store the gateway
    is writing to may answer a concurrent reader with "database is locked")."""
    return any(move.actor == "system:canary" for move in registry.history(limit=5))


def decisions(action: str) -> float:
    return REGISTRY.get_sample_value("flywheel_canary_decisions_total", {"action": action}) or 0.0


def test_a_canary_users_dislike_is_rolled_back_with_its_evidence(
    gateway: Gateway, worker: None, build: EventBuilder
) -> None:
    registry = with_versions(gateway)
    before = decisions("rollback")
    assert gateway.post("/admin/models/2/canary", {"percent": 50}, app="ops").status_code == 200
    live_traffic(gateway, build, canary_liked=0.2, canary_picked=0.15)
    wait_for(lambda: decided(registry), 60, "the canary rolled back")

    move = registry.history(limit=1)[0]
    assert (move.action, move.to_version, move.actor, move.percent) == (CANARY_ROLLBACK, "2", "system:canary", 0.0)
    seen = move.evidence or {}
    assert seen["decision"] == "rollback" and seen["wins"] < seen["losses"] and seen["champion"] == "1"
    assert seen["pairwise_log_lr"] >= seen["pairwise_threshold"] or seen["thumbs_log_lr"] >= seen["thumbs_threshold"]
    assert "worse than the champion" in (move.reason or "")
    assert str(registry.champion().version) == "1"
    assert decisions("rollback") == before + 1
    watcher = gateway.client.app.state.gateway.watcher  # type: ignore[attr-defined]
    inside = next(u for u in (f"u{i}" for i in range(100)) if in_canary(u, "2", 50))
    wait_for(lambda: watcher.canary is None, 10, "the gateway to follow")  # it refreshes right after deciding
    assert watcher.routes_for(inside, False)[0].version == "1"
    listed = gateway.get("/admin/models/history", app="ops").json()[0]
    assert listed["evidence"]["decision"] == "rollback" and listed["actor"] == "system:canary"
    assert gateway.get("/admin/models/canary", app="ops").json()["version"] is None

    # Which version served a canary user: the rule at the time, and their last recorded answer.
    during = (move.at if move.at.tzinfo else move.at.replace(tzinfo=UTC)) - timedelta(milliseconds=1)
    at = gateway.get("/admin/models/history/at", app="ops", params={"time": during.isoformat(),
                                                                     "user": "thumbs-2-0"}).json()
    assert (at["canary"], at["canary_percent"], at["last_answer"]["model_version"]) == ("2", 50.0, "2")
    versions = {v["version"]: v for v in gateway.get("/admin/models", app="ops").json()}
    assert versions["2"]["live"]["thumbs_up"]["trials"] == 40 and versions["2"]["against_champion"]["losses"] > 30


def test_a_canary_users_prefer_is_promoted_after_enough_votes(
    gateway: Gateway, worker: None, build: EventBuilder
) -> None:
    registry = with_versions(gateway)
    assert gateway.post("/admin/models/2/canary", {"percent": 20}, app="ops").status_code == 200
    status = gateway.get("/admin/models/canary", app="ops").json()
    assert (status["version"], status["percent"], status["serving"], status["automatic"], status["decision"]) == (
        "2", 20.0, True, True, "continue")
    assert status["evidence"]["wins"] == 0 and status["evidence"]["rule"]["min_votes_promote"] == 60
    live_traffic(gateway, build, canary_liked=0.95, canary_picked=0.9)
    wait_for(lambda: decided(registry), 60, "the canary promoted")

    stop, promote = registry.history(limit=2)
    assert (promote.action, promote.to_version, promote.actor) == ("promote", "2", "system:canary")
    assert (stop.action, stop.to_version) == (CANARY_STOP, "2") and registry.canary() is None
    assert str(registry.champion().version) == "2"
    seen = promote.evidence or {}
    assert seen["decision"] == "promote" and seen["wins"] + seen["losses"] + seen["canary_thumbs"] >= 60
    assert stop.evidence == promote.evidence
