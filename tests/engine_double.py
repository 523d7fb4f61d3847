"""A test double of the engine's OpenAI-compatible API, for the machine-feedback tests: real HTTP, no model.

It answers ``GET /v1/models`` and ``POST /v1/chat/completions`` through ``httpx.MockTransport``
as vLLM does (a model it does not serve is a 404), and records every request, so the code under
test (``feedback.ai``) runs unchanged on it: only the engine is replaced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from feedback.ai.engine import Engine

Reply = Callable[[dict[str, Any]], tuple[str, str]]
"""The request body -> (the answer's content, its finish reason)."""


class EngineDouble:
    def __init__(self, reply: Reply, models: tuple[str, ...] = ("judge",)) -> None:
        self.reply = reply
        self.models = models
        self.requests: list[dict[str, Any]] = []

    def engine(self) -> Engine:
        return Engine("http://engine.test", transport=httpx.MockTransport(self._handle))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models" and request.method == "GET":
            return httpx.Response(200, json={"object": "list", "data": [{"id": m, "object": "model"}
                                                                       for m in self.models]})
        if request.url.path != "/v1/chat/completions" or request.method != "POST":
            return httpx.Response(404, json={"detail": "Not Found"})
        body = json.loads(request.content)
        if body["model"] not in self.models:
            return httpx.Response(404, json={"error": {"message": f"The model `{body['model']}` does not exist.",
                                                       "type": "NotFoundError", "code": 404}})
        self.requests.append(body)
        content, finish = self.reply(body)
        return httpx.Response(200, json={
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        })


def shown(body: dict[str, Any]) -> tuple[str, str]:
    """The answers a judge's request shows as "Answer 1" and "Answer 2"."""
    content = body["messages"][-1]["content"]
    first = content.split("## Answer 1\n\n", 1)[1].split("\n\n## Answer 2\n\n", 1)
    return first[0], first[1].rsplit("\n\nWhich answer is better?", 1)[0]


def prefers(word: str) -> Reply:
    """A judge that picks the answer containing ``word``; with no such answer (or two), always position 1: a judge
    with a position bias, whose two orders then disagree."""
    def reply(body: dict[str, Any]) -> tuple[str, str]:
        first, second = shown(body)
        return ("2" if word in second and word not in first else "1"), "stop"
    return reply
