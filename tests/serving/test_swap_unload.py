"""Old adapters leave the engine after their last request and a grace period (issue 12, swaps).

The real gateway (chat router, admin routes, ``ChampionWatcher`` and its unloader) in front of a
small HTTP double of vLLM's OpenAI server, on a port of its own: it records each adapter load and
unload, can keep a model's answers open until the test lets them end, and can fail unloads. No
vLLM runs. Version 1 is the base model; versions 2 and 3 are adapters registered as a training
round registers them (the double never reads their files).

The store plays no part in a swap, so these tests run on SQLite only.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from feedback.db.session import make_engine, session_factory, upgrade
from flywheel.stack.supervise import free_port, wait_for
from tests.bench.bench_swaps import register_adapter
from tests.serving.conftest import Gateway, gateway_settings, running_gateway
from trainer.config import TrainerSettings
from trainer.registry import Registry

GRACE = 0.5  # swap_unload_grace_seconds
POLL = 0.2  # swap_poll_seconds: also the wait before an unload is tried again
SETTLE = 4 * GRACE  # long enough for any unload that is due to have happened
CHAT = {"model": "flywheel", "messages": [{"role": "user", "content": "hi"}]}


class FakeEngine:
    """vLLM's OpenAI server as far as the gateway uses it: models, chat (streaming or not), LoRA load and unload.

    ``calls`` records (what, model, monotonic time) for every load, unload, failed unload and answer sent
    whole. A model whose answers are ``held`` starts them (a stream sends its first chunk) and ends them
    when released.
    A chat for a model it does not serve gets vLLM's 404.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.loaded: set[str] = set()
        self.calls: list[tuple[str, str, float]] = []
        self.fail_unloads = 0
        self.open: Counter[str] = Counter()  # chats started and not yet answered, per model
        self._gates: dict[str, threading.Event] = {}
        self._changed = threading.Condition()

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/health", lambda _r: PlainTextResponse("")),
            Route("/v1/models", self._models),
            Route("/v1/load_lora_adapter", self._load, methods=["POST"]),
            Route("/v1/unload_lora_adapter", self._unload, methods=["POST"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
        ])

    def hold(self, model: str) -> None:
        self._gates[model] = threading.Event()

    def release(self, model: str) -> None:
        self._gates.pop(model).set()

    def release_all(self) -> None:
        for model in list(self._gates):
            self.release(model)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, timeout), f"not within {timeout} s; calls: {self.calls}"

    def done(self, what: str, adapter: str) -> list[float]:
        """When each ``what`` ("load", "unload", "unload failed", "answered") of ``adapter`` happened."""
        return [at for kind, name, at in self.calls if (kind, name) == (what, adapter)]

    def _record(self, what: str, adapter: str) -> None:
        with self._changed:
            self.calls.append((what, adapter, time.monotonic()))
            self._changed.notify_all()

    def _count(self, model: str, step: int) -> None:
        with self._changed:
            self.open[model] += step
            self._changed.notify_all()
        if step < 0:
            self._record("answered", model)

    async def _models(self, _request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": m} for m in (self.base, *sorted(self.loaded))]})

    async def _load(self, request: Request) -> Response:
        name = (await request.json())["lora_name"]
        if name in self.loaded:
            return JSONResponse({"error": {"message": f"{name} has already been loaded"}}, 400)
        self.loaded.add(name)
        self._record("load", name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: Request) -> Response:
        name = (await request.json())["lora_name"]
        if self.fail_unloads:
            self.fail_unloads -= 1
            self._record("unload failed", name)
            return JSONResponse({"error": {"message": "engine busy"}}, 500)
        if name not in self.loaded:
            return JSONResponse({"error": {"message": f"The lora adapter '{name}' cannot be found."}}, 404)
        self.loaded.remove(name)
        self._record("unload", name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        model = body["model"]
        if model != self.base and model not in self.loaded:
            return JSONResponse({"error": {"message": f"The model `{model}` does not exist."}}, 404)
        gate = self._gates.get(model)
        self._count(model, 1)

        async def answered() -> None:
            if gate is not None:
                await asyncio.to_thread(gate.wait, 30)

        if not body.get("stream"):
            try:
                await answered()
            finally:
                self._count(model, -1)
            return JSONResponse({"id": "x", "object": "chat.completion", "model": model, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": f"from {model}"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})

        def chunk(delta: dict[str, str], finish: str | None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": "from "}, None)
                await answered()
                yield chunk({"content": model}, "stop")
                yield "data: [DONE]\n\n"
            finally:
                self._count(model, -1)

        return StreamingResponse(events(), media_type="text/event-stream")


@contextmanager
def serving(engine: FakeEngine, port: int) -> Iterator[None]:
    """The double on 127.0.0.1:``port`` (uvicorn in a thread), until the block ends."""
    server = uvicorn.Server(uvicorn.Config(engine.app(), host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="fake-engine", daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "fake engine", interval=0.02)
    try:
        yield
    finally:
        engine.release_all()
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'flywheel.db'}"
    upgrade(url)
    return url


@dataclass
class Swaps:
    gateway: Gateway
    engine: FakeEngine

    def adapter(self, version: str) -> str:
        return self.gateway.settings.version_engine_model(version)

    def move(self, path: str, body: dict[str, Any] | None = None) -> None:
        response = self.gateway.post(f"/admin/models/{path}", body, app="ops")
        assert response.status_code == 200, response.text

    def chat(self, stream: bool = False, user: str | None = None) -> str:
        """One chat through the gateway; the version that answered it (a stream read to its end)."""
        body = {**CHAT, "stream": stream, **({"user": user} if user else {})}
        if not stream:
            response = self.gateway.post("/v1/chat/completions", body)
            assert response.status_code == 200, response.text
            return str(response.json()["flywheel"]["model_version"])
        with self.gateway.client.stream("POST", "/v1/chat/completions", json=body,
                                        headers=self.gateway.auth("app")) as response:
            assert response.status_code == 200
            lines = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
        assert lines[-1] == "[DONE]", lines
        return str(json.loads(lines[0])["flywheel"]["model_version"])

    def held_chat(self, pool: ThreadPoolExecutor, version: str, stream: bool = False) -> Future[str]:
        """A chat answered by ``version``'s adapter, kept open by the engine until the test releases it."""
        adapter = self.adapter(version)
        self.engine.hold(adapter)
        pending = pool.submit(self.chat, stream)
        self.engine.wait_until(lambda: self.engine.open[adapter] == 1)
        return pending


@pytest.fixture
def swaps(db_url: str, broker: str, tmp_path: Path, mlflow_uri: str) -> Iterator[Swaps]:
    port = free_port()
    settings = gateway_settings(db_url, broker, tmp_path / "data", mlflow_uri, engine_url=f"http://127.0.0.1:{port}",
                                swap_unload_grace_seconds=GRACE, swap_poll_seconds=POLL, canary_check_seconds=0)
    trainer_settings = TrainerSettings(_env_file=None, data_dir=settings.data_dir,  # type: ignore[call-arg]
                                       database_url=db_url, mlflow_tracking_uri=mlflow_uri,
                                       registered_model=settings.registered_model,
                                       mlflow_experiment=f"swaps-{uuid.uuid4().hex[:8]}")
    registry = Registry(trainer_settings, session_factory(make_engine(db_url)))
    assert registry.ensure_bootstrap() == "1"  # the base model, champion
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert [register_adapter(registry, adapter) for _ in range(2)] == ["2", "3"]
    engine = FakeEngine(settings.base_engine_model)
    with serving(engine, port):
        for gateway in running_gateway(settings):
            yield Swaps(gateway, engine)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def settles(name: str, value: float) -> None:
    """The gateway counts an unload once the engine's answer reached it, a moment after the engine recorded it."""
    wait_for(lambda: metric(name) == value, 5, f"{name} == {value} (now {metric(name)})", interval=0.02)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_old_adapter_stays_while_an_answer_holds_it_and_goes_after_the_grace(swaps: Swaps, stream: bool) -> None:
    engine, v2, v3 = swaps.engine, swaps.adapter("2"), swaps.adapter("3")
    swaps.move("2/promote")
    assert swaps.chat() == "2" and engine.loaded == {v2}
    unloads = metric("flywheel_adapter_unloads_total")
    with ThreadPoolExecutor(1) as pool:
        pending = swaps.held_chat(pool, "2", stream)
        swaps.move("3/promote")
        assert swaps.chat(stream) == "3"  # new requests go to the new version at once
        time.sleep(SETTLE)
        assert engine.done("unload", v2) == [], "unloaded while an answer still used it"
        assert metric("flywheel_engine_adapters_loaded") == 2
        engine.release(v2)
        assert pending.result(10) == "2"  # the held answer ends whole, from the version it began on
    engine.wait_until(lambda: v2 not in engine.loaded)
    assert engine.done("unload", v2)[0] >= engine.done("answered", v2)[-1] + GRACE  # the grace after the end
    settles("flywheel_adapter_unloads_total", unloads + 1)
    settles("flywheel_engine_adapters_loaded", 1)
    assert engine.loaded == {v3} and swaps.chat() == "3"
    assert not [call for call in engine.calls if call[1] == engine.base]  # the base model is never unloaded


def test_a_stream_whose_client_left_lets_its_adapter_go(swaps: Swaps) -> None:
    engine, v2 = swaps.engine, swaps.adapter("2")
    swaps.move("2/promote")
    engine.hold(v2)
    with swaps.gateway.client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                                     headers=swaps.gateway.auth("app")) as response:
        lines = response.iter_lines()  # kept: dropping a half-read iterator closes the response
        assert next(lines).startswith("data:")  # the answer began: v2 is held
        swaps.move("3/promote")
        time.sleep(SETTLE)
        assert engine.done("unload", v2) == []
    # The client closed the stream before its end (the engine still holds the answer open).
    engine.wait_until(lambda: v2 not in engine.loaded)


def test_a_version_routed_to_again_before_its_unload_is_kept(swaps: Swaps) -> None:
    engine, v2, v3 = swaps.engine, swaps.adapter("2"), swaps.adapter("3")
    swaps.move("2/promote")
    with ThreadPoolExecutor(1) as pool:
        pending = swaps.held_chat(pool, "2")  # keeps v2 loaded however slow the moves are
        swaps.move("3/promote")
        swaps.move("rollback")  # v2 is champion again while still loaded: kept, v3 retires
        engine.release(v2)
        assert pending.result(10) == "2"
    engine.wait_until(lambda: v3 not in engine.loaded)
    time.sleep(SETTLE)
    assert engine.loaded == {v2} and engine.done("unload", v2) == []
    assert len(engine.done("load", v2)) == 1  # routed to again without a second load
    assert swaps.chat(stream=True) == "2"

    # A canary that becomes champion keeps its adapter; the champion it replaced goes.
    swaps.move("3/canary", {"percent": 100})  # v3 was unloaded: loaded again
    assert swaps.chat(user="someone") == "3" and len(engine.done("load", v3)) == 2
    swaps.move("3/promote")
    engine.wait_until(lambda: v2 not in engine.loaded)
    time.sleep(SETTLE)
    assert engine.loaded == {v3} and len(engine.done("load", v3)) == 2 and len(engine.done("unload", v3)) == 1
    # A stopped canary goes too.
    swaps.move("2/canary", {"percent": 50})
    swaps.move("canary/stop")
    engine.wait_until(lambda: engine.loaded == {v3})
    assert len(engine.done("unload", v2)) == 2


def test_a_failed_unload_is_retried_and_counted(swaps: Swaps) -> None:
    engine, v2 = swaps.engine, swaps.adapter("2")
    failures = metric("flywheel_adapter_unload_failures_total")
    engine.fail_unloads = 2
    swaps.move("2/promote")
    swaps.move("3/promote")
    engine.wait_until(lambda: v2 not in engine.loaded)
    failed, unloaded = engine.done("unload failed", v2), engine.done("unload", v2)
    assert len(failed) == 2 and len(unloaded) == 1
    assert failed[1] - failed[0] >= POLL - 0.05 and unloaded[0] - failed[1] >= POLL - 0.05  # tried again, not spun
    settles("flywheel_adapter_unload_failures_total", failures + 2)
    assert swaps.chat() == "3" and swaps.chat(stream=True) == "3"  # requests never saw it
