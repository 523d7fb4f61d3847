"""The engine's OpenAI-compatible HTTP API as machine feedback uses it: blocking requests, from a thread pool.

The gateway's client (``serving.engine``) is asynchronous and belongs to the gateway; ``feedback``
imports nothing of ``serving``. Errors say what to do, and how far they reach: an engine that
cannot be reached, or that does not serve the model, fails every request alike and ends the run
at once (``EngineUnavailable``); a request it refuses (a conversation too long for its context)
or that times out fails that item only (``EngineError``), and the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx


class EngineError(RuntimeError):
    """The engine refused or failed one request."""


class EngineUnavailable(RuntimeError):
    """No request can succeed: the engine is unreachable, or it does not serve the model."""


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None  # "stop", or "length" when max_tokens cut it off
    seconds: float


class Engine:
    """The engine at ``url``; ``transport`` replaces the network (tests)."""

    def __init__(self, url: str, timeout: float = 300.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=5.0), transport=transport)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.http.close()

    def require(self, model: str) -> None:
        """Fail before any work unless the engine answers and serves ``model``."""
        served = sorted(card["id"] for card in self._request("GET", "/v1/models").json()["data"])
        if model not in served:
            raise EngineUnavailable(f"the engine at {self.url} does not serve {model!r}; it serves "
                                    f"{', '.join(served) or 'no model'}")

    def chat(self, model: str, messages: Sequence[dict[str, Any]], max_tokens: int,
             choices: Sequence[str] = ()) -> Reply:
        """One greedy answer (temperature 0: a re-run asks the same and gets the same). ``choices``: the answer must
        be one of them, by vLLM's structured outputs, so a small judge cannot wander off into prose."""
        body: dict[str, Any] = {"model": model, "messages": list(messages), "max_tokens": max_tokens, "temperature": 0}
        if choices:
            body["structured_outputs"] = {"choice": list(choices)}
        started = time.perf_counter()
        answer = self._request("POST", "/v1/chat/completions", json=body).json()["choices"][0]
        return Reply(answer["message"].get("content") or "", answer.get("finish_reason"), time.perf_counter() - started)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise EngineUnavailable(f"the engine at {self.url} is unreachable ({type(exc).__name__}: {exc}); start "
                                    "it (flywheel up) or point FLYWHEEL_ENGINE_URL at it") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:  # vLLM's answer for a model it does not serve (an adapter unloaded mid-run)
            raise EngineUnavailable(f"the engine at {self.url} answered 404 to {path}: {response.text[:300]}")
        if response.status_code != 200:
            raise EngineError(f"{path}: the engine answered {response.status_code}: {response.text[:300]}")
        return response
