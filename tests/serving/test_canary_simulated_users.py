"""Canaries decided by simulated users' own taste, through the real gateway, broker and worker.

``test_canary_auto`` scripts the votes; here the simulator's honest users (``flywheel.simulation``,
taste ``concise``) chat with the gateway over HTTP, are routed to champion or canary by the sticky
rule, get champion-against-canary pairs with the side drawn by the gateway, read what they were
served and vote by their taste alone. The engine is ``tests.serving.fake_engine``: the champion
(the base model) answers in 34 words, the canary's adapter in 85 (users who like it short roll it
back) or in 10 (they promote it). The real worker filters and stores the votes, and the
gateway's own timer applies the canary rule.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from feedback.apps import create_app as create_api_app
from feedback.db.models import Completion, Feedback
from feedback.db.session import make_engine, session_factory, transaction
from feedback.worker import Worker
from flywheel.simulation.runner import run_scenario
from flywheel.simulation.scenario import Scenario
from flywheel.simulation.truth import TruthWriter
from flywheel.stack.supervise import free_port, wait_for
from registry.canary_rule import CanaryRule
from registry.promotion import CANARY_ROLLBACK, CANARY_STOP, Promotion
from serving.app import create_app
from serving.settings import ServingSettings
from tests.bench.bench_swaps import register_adapter
from tests.feedback.filtering import filter_settings
from tests.serving.conftest import gateway_settings
from tests.serving.fake_engine import FakeEngine, on_port, serving
from trainer.config import TrainerSettings
from trainer.registry import Registry

SHORT = "Rest, drink water and see a doctor if it lasts."
MIDDLE = " ".join(["It depends on many things, and there is a great deal to say about each of them."] * 2)
LONG = " ".join(["It depends on many things, and there is a great deal to say about each of them."] * 5)
TIME_SCALE = 0.02
USERS = Scenario.model_validate({
    "name": "canary-users", "seed": 5, "time_scale": TIME_SCALE, "concurrency": 8, "arrival_seconds": 10,
    "prompt_pool": 40, "preference": {"taste": "concise", "max_words": 30},
    "groups": [{"type": "honest", "count": 60, "events_per_user": 4, "pairwise_share": 0.5, "error_rate": 0.05}],
})


def registry_with_an_adapter(settings: ServingSettings, db_url: str, tmp_path: Path) -> Promotion:
    """The base model as champion (version 1) and one trained adapter (version 2), as a round registers them."""
    trainer = TrainerSettings(_env_file=None, data_dir=settings.data_dir,  # type: ignore[call-arg]
                              database_url=db_url, mlflow_tracking_uri=settings.resolved_mlflow_uri,
                              registered_model=settings.registered_model,
                              mlflow_experiment=f"canary-users-{uuid.uuid4().hex[:8]}")
    registry = Registry(trainer, session_factory(make_engine(db_url)))
    assert registry.ensure_bootstrap() == "1"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert register_adapter(registry, adapter) == "2"
    return Promotion(settings.resolved_mlflow_uri, settings.registered_model, session_factory(make_engine(db_url)))


@dataclass
class Live:
    url: str
    keys: dict[str, str]
    registry: Promotion
    db_url: str

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.request(method, f"{self.url}{path}", json=body, timeout=30,
                                 headers={"Authorization": f"Bearer {self.keys['ops']}"})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture(params=[LONG, SHORT], ids=["worse-canary", "better-canary"])
def canary_answer(request: pytest.FixtureRequest) -> str:
    """What the canary's adapter answers; the champion always answers MIDDLE."""
    answer: str = request.param
    return answer


@pytest.fixture
def live(db_url: str, broker: str, tmp_path: Path, mlflow_uri: str, canary_answer: str) -> Iterator[Live]:
    """The gateway on a port of its own before the fake engine, with the real worker beside it judging a
    simulation at the users' time scale."""
    engine_port, gateway_port = free_port(), free_port()
    settings = gateway_settings(db_url, broker, tmp_path / "data", mlflow_uri,
                                engine_url=f"http://127.0.0.1:{engine_port}", swap_poll_seconds=0.2,
                                canary_check_seconds=0.3,
                                canary_rule=CanaryRule(min_votes_promote=60, min_thumbs_per_arm=20))
    registry = registry_with_an_adapter(settings, db_url, tmp_path)
    with transaction(session_factory(make_engine(db_url))) as session:
        keys = {name: create_api_app(session, name, admin=name == "ops")[1] for name in ("app", "ops")}
    engine = FakeEngine(settings.base_engine_model,
                        say=lambda model, _body: MIDDLE if model == settings.base_engine_model else canary_answer)
    worker = Worker(settings, filter_settings(simulation=True, time_scale=TIME_SCALE))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with serving(engine, engine_port), on_port(create_app(settings), gateway_port):
            yield Live(f"http://127.0.0.1:{gateway_port}", keys, registry, db_url)
    finally:
        stop.set()
        thread.join(30)


def test_simulated_users_roll_back_a_canary_they_dislike_and_promote_one_they_prefer(
    live: Live, canary_answer: str, tmp_path: Path
) -> None:
    worse = canary_answer == LONG
    action, champion = (CANARY_ROLLBACK, "1") if worse else ("promote", "2")
    assert live.admin("POST", "/admin/models/2/canary", {"percent": 50})["version"] == "2"
    wait_for(lambda: live.admin("GET", "/admin/models/canary")["serving"], 10, "the gateway to route to the canary")

    summary = asyncio.run(run_scenario(USERS, live.url, live.keys["app"], TruthWriter(tmp_path / "truth.jsonl")))
    assert sum(summary.sent.values()) == 240 and not summary.failed
    wait_for(lambda: any(m.actor == "system:canary" for m in live.registry.history(limit=5)), 60,
             "an automatic decision")

    move = next(m for m in live.registry.history(limit=5) if m.actor == "system:canary" and m.action != CANARY_STOP)
    assert (move.action, move.to_version) == (action, "2")
    seen = move.evidence or {}
    assert (seen["losses"] > seen["wins"]) if worse else (seen["wins"] > seen["losses"]), seen
    assert str(live.registry.champion().version) == champion and live.registry.canary() is None
    with session_factory(make_engine(live.db_url))() as session:
        served = session.scalars(select(Completion)).all()
        accepted = session.scalar(select(func.count()).select_from(Feedback))
    # Users met each version alone and in pairs, the canary on side A of some pairs and on side B of others.
    assert {(c.model_version, c.answer) for c in served} == {("1", MIDDLE), ("2", canary_answer)}
    assert {c.response_id[-1] for c in served if c.pair_id and c.model_version == "2"} == {"a", "b"}
    assert accepted and accepted >= seen["wins"] + seen["losses"]  # the rule counted votes the worker accepted
    # After the decision a user who was in the canary's share is answered by the champion.
    inside = next(c.user_id for c in served if c.pair_id is None and c.model_version == "2")
    wait_for(lambda: live.admin("GET", "/admin/models/canary")["version"] is None, 10, "the gateway to follow")
    answer = httpx.post(f"{live.url}/v1/chat/completions", timeout=30,
                        headers={"Authorization": f"Bearer {live.keys['app']}"},
                        json={"model": "flywheel", "messages": [{"role": "user", "content": "hi"}], "user": inside})
    assert answer.status_code == 200 and answer.json()["flywheel"]["model_version"] == champion
