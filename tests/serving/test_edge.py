"""Input the store cannot hold is refused at the edge with a 400 in OpenAI's envelope, before Kafka sees it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from httpx2 import Response

from tests.serving.conftest import Gateway

RESPONSE_ID = "resp_" + "0" * 32


def raw_post(gateway: Gateway, path: str, text: str) -> Response:
    """POST JSON text as written: a lone surrogate escape cannot go through json.dumps and UTF-8."""
    headers = {**gateway.auth("app"), "Content-Type": "application/json"}
    return gateway.client.post(path, content=text.encode(), headers=headers)


def assert_refused(response: Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    assert all(word in error["message"] for word in words), error["message"]


def chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "flywheel", "messages": [{"role": "user", "content": content}], **extra}


def thumbs(**fields: Any) -> dict[str, Any]:
    return {"type": "thumbs", "response_id": RESPONSE_ID, "rating": "up", "user_id": "u1", **fields}


@pytest.mark.parametrize("body", [
    chat("tell me\u0000more"),
    chat([{"type": "text", "text": "a\u0000b"}]),
    chat("hello", stop=["\u0000"]),
    chat("hello", user="end\u0000user"),
], ids=["content", "content-part", "extra-parameter", "user"])
def test_chat_with_a_nul_character_is_refused(gateway: Gateway, body: dict[str, Any]) -> None:
    assert_refused(gateway.post("/v1/chat/completions", body), "NUL", "cannot be stored")


@pytest.mark.parametrize("content", ['"a\\ud800b"', '[{"type": "text", "text": "\\udfff"}]'], ids=["str", "part"])
def test_chat_with_a_lone_surrogate_is_refused(gateway: Gateway, content: str) -> None:
    text = f'{{"model": "flywheel", "messages": [{{"role": "user", "content": {content}}}]}}'
    assert_refused(raw_post(gateway, "/v1/chat/completions", text), "surrogate")


@pytest.mark.parametrize(("fields", "words"), [
    ({"comment": "nice\u0000"}, ("body.comment", "NUL")),
    ({"user_id": "u\u0000"}, ("body.user_id", "NUL")),
    ({"correction": "\u0000"}, ("body.correction", "NUL")),
    ({"user_id": "u" * 257}, ("user_id", "at most 256")),
    ({"comment": "c" * 4001}, ("comment", "at most 4000")),
    ({"event_id": "e" * 129}, ("event_id", "at most 128")),
])
def test_feedback_the_store_cannot_hold_is_refused(gateway: Gateway, fields: dict[str, Any],
                                                   words: tuple[str, ...]) -> None:
    assert_refused(gateway.post("/v1/feedback", thumbs(**fields)), *words)


def test_a_batch_with_one_unstorable_event_is_refused_whole(gateway: Gateway) -> None:
    assert_refused(gateway.post("/v1/feedback/batch", [thumbs(), thumbs(comment="\u0000")]), "body.1.comment")
    lone = json.dumps(thumbs(user_id="LONE")).replace("LONE", "\\ud83d")
    text = f"[{json.dumps(thumbs())}, {lone}]"
    assert_refused(raw_post(gateway, "/v1/feedback/batch", text), "body.1.user_id", "surrogate")


def test_storable_feedback_is_accepted(gateway: Gateway) -> None:
    response = gateway.post("/v1/feedback", thumbs(comment="ünïcödé and emoji 🙂 are fine"))
    assert response.status_code == 202, response.text
