"""Every error in OpenAI's envelope, every route's answers declared, and the feedback an app can see."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from feedback.db.models import AliasMove
from feedback.db.session import make_engine, session_factory, transaction
from feedback.producer import EventProducer
from flywheel.stack.supervise import wait_for
from serving.protocol import ErrorResponse
from tests.conftest import EventBuilder
from tests.serving.conftest import Gateway


def envelope(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    ErrorResponse.model_validate(body)
    assert set(body) == {"error"} and body["error"]["code"] == status
    return dict(body["error"])


def test_unknown_routes_and_methods_answer_in_the_envelope(gateway: Gateway) -> None:
    assert envelope(gateway.get("/v1/nothing-here"), 404)["type"] == "not_found_error"
    assert envelope(gateway.client.put("/v1/feedback"), 405)["type"] == "invalid_request_error"
    assert envelope(gateway.client.get("/v1/models"), 401)["type"] == "authentication_error"
    assert envelope(gateway.get("/admin/models"), 403)["type"] == "permission_error"


def test_bad_chat_parameters_are_400_not_500(gateway: Gateway) -> None:
    chat = {"model": "flywheel", "messages": [{"role": "user", "content": "hi"}]}
    error = envelope(gateway.post("/v1/chat/completions", {**chat, "stream": True, "stream_options": "usage"}), 400)
    assert "stream_options" in error["message"]
    assert envelope(gateway.post("/v1/chat/completions", {**chat, "messages": "hi"}), 400)["type"] == \
        "invalid_request_error"
    # Valid, but nothing is loaded in this test gateway: the gateway's own 503, with Retry-After.
    unavailable = gateway.post("/v1/chat/completions", chat)
    assert envelope(unavailable, 503)["type"] == "service_unavailable" and unavailable.headers["Retry-After"]


def test_an_app_id_no_store_can_hold_is_400_not_500(gateway: Gateway) -> None:
    """Found by schemathesis: a 22-digit app_id reached SQLite and overflowed its INTEGER (a 500)."""
    ops = gateway.auth("ops")
    for path in ("/admin/quarantine?app_id=3521784474266468089856", "/admin/quarantine/e1?app_id=2147483648"):
        assert "app_id" in envelope(gateway.client.get(path, headers=ops), 400)["message"]
    assert envelope(gateway.client.get("/admin/quarantine/e1?app_id=2147483647", headers=ops), 404)


def test_an_unexpected_failure_is_a_500_in_the_envelope(gateway: Gateway) -> None:
    engine = sa.create_engine(gateway.settings.resolved_database_url)
    with engine.begin() as conn:  # the database loses a table under the gateway's feet
        conn.execute(sa.text("ALTER TABLE apps RENAME TO apps_gone"))
    engine.dispose()
    error = envelope(gateway.get("/v1/models", app="other"), 500)  # a key the gateway has not cached yet
    assert error["type"] == "api_error" and "apps_gone" not in error["message"]


def test_every_route_declares_what_it_answers(gateway: Gateway) -> None:
    schema = gateway.client.get("/openapi.json").json()
    expected = {
        ("post", "/v1/chat/completions"): {"200", "400", "401", "404", "429", "502", "503"},
        ("post", "/v1/feedback"): {"202", "400", "401", "429", "503"},
        ("post", "/v1/feedback/batch"): {"202", "400", "401", "429", "503"},
        ("get", "/v1/feedback/{event_id}"): {"200", "400", "401", "404", "429"},
        ("get", "/v1/models"): {"200", "401", "429", "503"},
        ("post", "/admin/models/{version}/promote"): {"200", "400", "401", "403", "409"},
        ("post", "/admin/models/rollback"): {"200", "400", "401", "403", "409"},
        ("get", "/admin/quarantine/{event_id}"): {"200", "400", "401", "403", "404", "409"},
        ("get", "/readyz"): {"200", "503"},
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert "422" not in codes and "default" in codes, (method, path)
            assert expected.get((method, path), set()) <= codes, (method, path, codes)
            for code in codes - {"default"}:
                content = operation["responses"][code].get("content", {})
                json_schema = content.get("application/json", {}).get("schema", {})
                assert json_schema or path == "/metrics" or "text/event-stream" in content, (method, path, code)
                if code >= "400" and (path, code) != ("/readyz", "503"):
                    assert json_schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, code)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for name in ("QuarantinedEvent", "QuarantineList", "Released", "Purged", "ChampionMoved", "AliasMoveOut"):
        assert "additionalProperties" not in schema["components"]["schemas"][name], name


def test_promote_and_rollback_take_no_body_and_history_has_a_time_zone(gateway: Gateway) -> None:
    # No version and no champion in this registry: the answer is the registry's 409, not a missing body.
    assert "no version" in envelope(gateway.client.post("/admin/models/7/promote", headers=gateway.auth("ops")),
                                    409)["message"]
    assert "no champion" in envelope(gateway.client.post("/admin/models/rollback", headers=gateway.auth("ops")),
                                     409)["message"]
    assert gateway.post("/admin/models/rollback", {"reason": "typo", "extra": 1}, app="ops").status_code == 400
    engine = make_engine(gateway.settings.resolved_database_url)
    with transaction(session_factory(engine)) as session:
        session.add(AliasMove(model_name=gateway.settings.registered_model, alias="champion", action="bootstrap",
                              to_version="1", actor="test"))
    engine.dispose()
    [move] = gateway.get("/admin/models/history", app="ops").json()
    assert move["at"].endswith(("Z", "+00:00")), move["at"]


def test_an_app_sees_its_own_verdicts_only(gateway: Gateway, worker: None, build: EventBuilder) -> None:
    app_id = gateway.app_ids["app"]
    answer = build.completion(app_id)
    producer = EventProducer(gateway.settings)
    asyncio.run(producer.send_many([answer]))
    producer.close()
    vote = {"type": "thumbs", "response_id": answer.response_id, "rating": "up", "user_id": "u1", "event_id": "v-1"}
    orphan = {**vote, "response_id": build.completion(app_id).response_id, "event_id": "v-2"}
    sent = gateway.post("/v1/feedback/batch", [vote, orphan])
    assert sent.status_code == 202 and sent.json() == {"event_ids": ["v-1", "v-2"], "status": "pending"}
    assert gateway.get("/v1/feedback/v-1").json()["status"] in ("pending", "accepted")

    wait_for(lambda: gateway.get("/v1/feedback/v-2").json()["status"] != "pending", 30, "verdicts")
    wait_for(lambda: gateway.get("/v1/feedback/v-1").json()["status"] != "pending", 30, "verdicts")
    assert gateway.get("/v1/feedback/v-1").json() == {"event_id": "v-1", "status": "accepted", "weight": 1.0,
                                                      "reasons": None}
    assert gateway.get("/v1/feedback/v-2").json() == {"event_id": "v-2", "status": "quarantined", "weight": None,
                                                      "reasons": ["unknown_response"]}
    assert "no feedback event" in envelope(gateway.get("/v1/feedback/v-1", app="other"), 404)["message"]
    envelope(gateway.get("/v1/feedback/never-sent"), 404)
    envelope(gateway.get("/v1/feedback/bad id!"), 400)
