"""Browser feedback tokens: one vote on one answer or pair, with no app key; expired, forged, reused refused."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import pytest

from feedback.apps import Caller
from flywheel.stack.supervise import wait_for
from serving.champion import Route
from serving.engine import EngineClient
from serving.engines import Engine
from serving.feedback_tokens import FeedbackTokens
from serving.protocol import ChatCompletionRequest
from serving.routers.chat import _Exchange
from tests.serving.conftest import Gateway, gateway_settings
from tests.serving.test_api import envelope

RESPONSE, OTHER_RESPONSE = "resp_" + "1" * 32, "resp_" + "2" * 32
PAIR = "pair_" + "3" * 32


def tokens(gateway: Gateway) -> FeedbackTokens:
    issuer: FeedbackTokens = gateway.client.app.state.gateway.tokens  # type: ignore[attr-defined]
    return issuer


def vote(token: str, gateway: Gateway, body: dict[str, Any], path: str = "/v1/feedback") -> Any:
    return gateway.client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})


def thumbs(response_id: str = RESPONSE) -> dict[str, Any]:
    return {"type": "thumbs", "response_id": response_id, "rating": "up", "user_id": "browser-user"}


def test_every_answer_carries_a_token_for_its_one_vote() -> None:
    issuer = FeedbackTokens(b"k" * 32, ttl_s=60)
    caller, route = Caller(7, "app", is_admin=False), Route(
        version="1", engine_model="base", engine=Engine("base", EngineClient("http://127.0.0.1:9", 1)))
    messages = [{"role": "user", "content": "hi"}]
    single = _Exchange(ChatCompletionRequest(model="flywheel", messages=messages), caller, (route,), route, "flywheel",
                       issuer)
    grant = issuer.verify(single.flywheel["feedback_token"])
    assert (grant.app_id, grant.target) == (7, single.flywheel["response_id"])
    pair = _Exchange(ChatCompletionRequest(model="flywheel", messages=messages, flywheel={"pairwise": True}),
                     caller, (route, route), route, "flywheel", issuer)
    assert issuer.verify(pair.flywheel["feedback_token"]).target == pair.flywheel["pair_id"]


def test_a_token_records_its_one_vote_and_nothing_else(gateway: Gateway) -> None:
    token = tokens(gateway).issue(gateway.app_ids["app"], RESPONSE)
    accepted = vote(token, gateway, thumbs())
    assert accepted.status_code == 202, accepted.text
    [event_id] = accepted.json()["event_ids"]
    assert event_id.startswith("fbt-")
    assert gateway.get(f"/v1/feedback/{event_id}").json()["status"] == "pending"  # the app's own event
    reused = envelope(vote(token, gateway, {**thumbs(), "rating": "down"}), 409)
    assert "already used" in reused["message"] and event_id in reused["message"]
    assert "not on " + OTHER_RESPONSE in envelope(vote(token, gateway, thumbs(OTHER_RESPONSE)), 403)["message"]
    pair_vote = {"type": "pairwise", "pair_id": PAIR, "choice": "a", "user_id": "u"}
    envelope(vote(token, gateway, pair_vote), 403)
    # Nowhere else: not the batch, not a verdict, not chat, not admin.
    for response in (vote(token, gateway, [thumbs()], "/v1/feedback/batch"),
                     gateway.client.get(f"/v1/feedback/{event_id}", headers={"Authorization": f"Bearer {token}"}),
                     gateway.client.get("/admin/models", headers={"Authorization": f"Bearer {token}"})):
        assert "POST /v1/feedback only" in envelope(response, 401)["message"]


def test_a_pair_token_allows_one_choice_on_its_pair(gateway: Gateway) -> None:
    token = tokens(gateway).issue(gateway.app_ids["app"], PAIR)
    envelope(vote(token, gateway, thumbs(PAIR.replace("pair_", "resp_") + "_a")), 403)
    assert vote(token, gateway, {"type": "pairwise", "pair_id": PAIR, "choice": "b", "user_id": "u"}).status_code == 202


def test_expired_and_forged_tokens_are_refused(gateway: Gateway) -> None:
    issuer = tokens(gateway)
    expired = issuer.issue(gateway.app_ids["app"], RESPONSE, now=time.time() - issuer.ttl_s - 1)
    assert "expired" in envelope(vote(expired, gateway, thumbs()), 401)["message"]
    foreign = FeedbackTokens(b"not the gateway's secret", issuer.ttl_s).issue(gateway.app_ids["app"], RESPONSE)
    assert "signature" in envelope(vote(foreign, gateway, thumbs()), 401)["message"]
    genuine = issuer.issue(gateway.app_ids["app"], RESPONSE)
    widened = genuine.replace(genuine.split(".")[1], FeedbackTokens(b"", 1).issue(
        gateway.app_ids["other"], RESPONSE).split(".")[1])  # another app's payload under this signature
    assert "signature" in envelope(vote(widened, gateway, thumbs()), 401)["message"]
    envelope(vote("fwt.garbage", gateway, thumbs()), 401)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_vote_stored_before_a_gateway_restart_is_still_used(gateway: Gateway, worker: None) -> None:
    token = tokens(gateway).issue(gateway.app_ids["app"], RESPONSE)
    [event_id] = vote(token, gateway, thumbs()).json()["event_ids"]
    wait_for(lambda: gateway.get(f"/v1/feedback/{event_id}").json()["status"] != "pending", 30, "the verdict")
    gateway.client.app.state.gateway.sent.clear()  # type: ignore[attr-defined]  # as a restarted gateway forgets
    envelope(vote(token, gateway, thumbs()), 409)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_secret_is_made_once_kept_private_and_never_shown(tmp_path: Path, db_url: str, mlflow_uri: str) -> None:
    settings = gateway_settings(db_url, "127.0.0.1:9", tmp_path, mlflow_uri)
    key = settings.feedback_token_key()
    assert key == settings.feedback_token_key() and len(key) == 64
    assert stat.S_IMODE((tmp_path / "feedback_token.secret").stat().st_mode) == 0o600
    chosen = gateway_settings(db_url, "127.0.0.1:9", tmp_path, mlflow_uri, feedback_token_secret="s3cret-value")
    assert chosen.feedback_token_key() == b"s3cret-value" and "s3cret-value" not in repr(chosen)
