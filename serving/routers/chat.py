"""``POST /v1/chat/completions``: OpenAI's chat API, answered by the champion (or the canary) and recorded.

Every answer becomes a completion event in Kafka before the caller gets it (or, when
streaming, before ``[DONE]``): feedback can only count for an answer the store knows was
served, so an answer the broker did not take is reported as an error, not silently lost.

The watcher picks the version of each answer (``ChampionWatcher.routes_for``): a user in a
canary's share gets the canary, and their pairs pit champion against canary. Each answer's
completion event records the version that gave it. A request holds its routes (``ChampionWatcher.hold``)
until its answer ends, the last byte of a stream included, so an old adapter is never unloaded under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from feedback.apps import Caller
from feedback.events import CompletionEvent, answer_ids
from serving.champion import Route
from serving.deps import CallerDep, GatewayState, StateDep
from serving.engine import EngineError
from serving.errors import error_for, responses
from serving.feedback_tokens import FeedbackTokens
from serving.metrics import ANSWERS, CHAT_ERRORS, CHAT_LATENCY, VERSION_LATENCY
from serving.protocol import ChatCompletion, ChatCompletionRequest, FlywheelAnswer
from serving.sides import joined, merged

router = APIRouter(tags=["chat"])


class _Exchange:
    """One request's identity and the facts its completion events will record."""

    def __init__(self, body: ChatCompletionRequest, caller: Caller, routes: tuple[Route, ...], champion: Route,
                 public_model: str, tokens: FeedbackTokens) -> None:
        self.body = body
        self.caller = caller
        self.routes = routes  # one per answer: A then B for a pair
        self.public_model = public_model
        self.pair_id, self.response_ids = answer_ids(body.flywheel.pairwise)
        self.started = time.perf_counter()
        self.ttft_ms: float | None = None
        self.flywheel = FlywheelAnswer(
            model_version=routes[0].version if len(self.versions) == 1 else champion.version,
            model_versions=[route.version for route in routes] if self.pair_id else None,
            response_id=None if self.pair_id else self.response_ids[0],
            pair_id=self.pair_id,
            response_ids=self.response_ids if self.pair_id else None,
            feedback_token=tokens.issue(caller.app_id, self.pair_id or self.response_ids[0]),
        ).model_dump(exclude_none=True)

    @property
    def one_call(self) -> bool:
        """Whether one engine call answers it all (a pair from one engine model is one ``n=2`` call).

        Engine model names are unique across engines (``<registered model>-v<N>``, and the base), so one
        name means one engine too."""
        return len({route.engine_model for route in self.routes}) == 1

    @property
    def versions(self) -> set[str]:
        return {route.version for route in self.routes}

    def label(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """Present an engine result as ours: public model name, our ids, the flywheel object."""
        chunk["id"] = self.pair_id or self.response_ids[0]
        chunk["model"] = self.public_model
        chunk["flywheel"] = self.flywheel
        return chunk

    def events(self, answers: dict[int, tuple[str, str | None]], usage: dict[str, Any] | None) -> list[CompletionEvent]:
        latency_ms = (time.perf_counter() - self.started) * 1000
        usage = usage or {}
        single = len(self.response_ids) == 1
        params = self.body.model_dump(
            exclude={"model", "messages", "stream", "flywheel", "user", "n", "stream_options"}, exclude_none=True
        )
        return [
            CompletionEvent(
                app_id=self.caller.app_id,
                response_id=response_id,
                pair_id=self.pair_id,
                user_id=self.body.user,
                model_version=self.routes[index].version,
                messages=self.body.messages,
                answer=answers.get(index, ("", None))[0],
                finish_reason=answers.get(index, ("", None))[1],
                params=params,
                latency_ms=latency_ms,
                ttft_ms=self.ttft_ms,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens") if single else None,
            )
            for index, response_id in enumerate(self.response_ids)
        ]


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={200: {"model": ChatCompletion, "content": {"text/event-stream": {}}},
               **responses(400, 401, 404, 429, 502, 503)},
)
async def create_chat_completion(
    body: ChatCompletionRequest, caller: CallerDep, state: StateDep
) -> JSONResponse | StreamingResponse:
    if body.model != state.settings.public_model:
        raise HTTPException(404, f"model {body.model!r} does not exist; this gateway serves "
                                 f"{state.settings.public_model!r}")
    with contextlib.ExitStack() as held:
        routes = held.enter_context(state.watcher.hold(body.user, body.flywheel.pairwise)).routes
        exchange = _Exchange(body, caller, routes, state.watcher.route, state.settings.public_model, state.tokens)
        try:
            if body.stream:
                if exchange.one_call:
                    chunks = routes[0].engine.client.chat_stream(body.engine_payload(routes[0].engine_model))
                else:
                    chunks = merged([r.engine.client.chat_stream(body.engine_payload(r.engine_model, n=1))
                                     for r in routes])
                try:
                    first = await anext(chunks)  # engine errors become HTTP errors before any byte is sent
                except StopAsyncIteration:
                    raise EngineError("engine closed the stream without an answer") from None
                return _HeldStream(_stream(state, exchange, first, chunks), held.pop_all())

            if exchange.one_call:
                result = await routes[0].engine.client.chat(body.engine_payload(routes[0].engine_model))
            else:
                result = joined(await asyncio.gather(
                    *(r.engine.client.chat(body.engine_payload(r.engine_model, n=1)) for r in routes)))
        except EngineError:
            _failed(exchange)
            raise
        answers = {c["index"]: (c["message"].get("content") or "", c.get("finish_reason")) for c in result["choices"]}
        await state.record(exchange.events(answers, result.get("usage")))
        _observe(exchange, stream=False)
        return JSONResponse(exchange.label(result))  # already JSON-safe: skip FastAPI's re-encoding


class _HeldStream(StreamingResponse):
    """An event stream that holds its routes until its last byte is sent or its client is gone.

    Released here, not in the body's generator: a generator never started (the client left before
    the body began) never runs its ``finally``, and the route would stay held for ever.
    """

    def __init__(self, content: AsyncIterator[str], held: contextlib.ExitStack) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.held:
            await super().__call__(scope, receive, send)


async def _stream(
    state: GatewayState, exchange: _Exchange, first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[str]:
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    usage: dict[str, Any] | None = None
    options = exchange.body.stream_options
    wants_usage = bool(options and options.include_usage)

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield first
        async for chunk in rest:
            yield chunk

    try:
        async for chunk in chunks():
            for choice in chunk.get("choices", []):
                content = choice.get("delta", {}).get("content")
                if content:
                    if exchange.ttft_ms is None:
                        exchange.ttft_ms = (time.perf_counter() - exchange.started) * 1000
                    texts.setdefault(choice["index"], []).append(content)
                if choice.get("finish_reason"):
                    finish[choice["index"]] = choice["finish_reason"]
            if chunk.get("usage"):
                usage = chunk["usage"]
                if not chunk.get("choices") and not wants_usage:
                    continue
            yield _sse(exchange.label(chunk))
        answers = {i: ("".join(parts), finish.get(i)) for i, parts in texts.items()}
        await state.record(exchange.events(answers, usage))
    except Exception as exc:  # the status line is gone: report in-band, as OpenAI does
        if isinstance(exc, EngineError):
            _failed(exchange)
        yield _sse(error_for(exc)[1].model_dump())
        return
    _observe(exchange, stream=True)
    yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _observe(exchange: _Exchange, stream: bool) -> None:
    elapsed = time.perf_counter() - exchange.started
    CHAT_LATENCY.labels(stream=str(stream).lower()).observe(elapsed)
    for version in exchange.versions:
        VERSION_LATENCY.labels(model_version=version).observe(elapsed)
    for route in exchange.routes:
        ANSWERS.labels(model_version=route.version).inc()


def _failed(exchange: _Exchange) -> None:
    """An engine failure counts against every version the request asked (a pair from two: both)."""
    for version in exchange.versions:
        CHAT_ERRORS.labels(model_version=version).inc()
