"""A small HTTP double of vLLM's OpenAI server, on a port of its own, for tests of what the gateway does around it.

It serves what the gateway uses (health, models, chat streaming or not, LoRA load and unload), records
each adapter load and unload, can keep a model's answers open until the test lets them end, can fail
unloads, and can fail its health check (an engine still starting). No model runs: tests that use it
are about swaps, routing and feedback, not about answers. ``FakeLauncher`` starts one per full-model
version, as the gateway's engine launcher.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from flywheel.stack.supervise import free_port, wait_for
from serving.engines import EngineSpec, LaunchedEngine

Say = Callable[[str, dict[str, Any]], str]
"""(engine model, request body) -> the answer's text."""


class FakeEngine:
    """vLLM's OpenAI server as far as the gateway uses it: models, chat (streaming or not), LoRA load and unload.

    ``calls`` records (what, model, monotonic time) for every load, unload, failed unload and answer sent
    whole. A model whose answers are ``held`` starts them (a stream sends its first chunk) and ends them
    when released.
    A chat for a model it does not serve gets vLLM's 404. ``say`` writes each answer from the model and
    the request (a stream sends "from " and then the model's name).
    """

    def __init__(self, base: str, say: Say = lambda model, _body: f"from {model}") -> None:
        self.base = base
        self.say = say
        self.loaded: set[str] = set()
        self.calls: list[tuple[str, str, float]] = []
        self.fail_unloads = 0
        self.refuse_loads: set[str] = set()  # adapter names whose load is refused, as vLLM refuses a broken adapter
        self.healthy = threading.Event()  # cleared: /health answers 503, as an engine still starting
        self.healthy.set()
        self.killed = threading.Event()  # set: a launched engine reports that it exited (FakeLauncher)
        self.open: Counter[str] = Counter()  # chats started and not yet answered, per model
        self._gates: dict[str, threading.Event] = {}
        self._changed = threading.Condition()

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/health", lambda _r: PlainTextResponse("", 200 if self.healthy.is_set() else 503)),
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
        if name in self.refuse_loads:
            self._record("load refused", name)
            return JSONResponse({"error": {"message": f"{name}: no adapter at that path"}}, 404)
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
            choices = [{"index": i, "message": {"role": "assistant", "content": self.say(model, body)},
                        "finish_reason": "stop"} for i in range(int(body.get("n") or 1))]
            return JSONResponse({"id": "x", "object": "chat.completion", "model": model, "choices": choices,
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
def on_port(app: Callable[..., Any], port: int, lifespan: Literal["on", "off"] = "on") -> Iterator[None]:
    """An ASGI app served on 127.0.0.1:``port`` by uvicorn in a thread, until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan=lifespan))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, f"the app on port {port}", interval=0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def serving(engine: FakeEngine, port: int) -> Iterator[None]:
    """The double on 127.0.0.1:``port``, until the block ends (answers it holds are let go first)."""
    with on_port(engine.app(), port, lifespan="off"):
        try:
            yield
        finally:
            engine.release_all()


class FakeLauncher:
    """An ``EngineLauncher`` double: each launch serves a new ``FakeEngine`` under the spec's name on a port of its own.

    ``fail`` makes launches raise it; ``start_unhealthy`` starts engines failing their health check until the
    test sets their ``healthy``. Each engine records ``("stopped", its name)`` when the gateway stops it.
    """

    def __init__(self) -> None:
        self.launched: list[tuple[EngineSpec, FakeEngine]] = []
        self.fail: Exception | None = None
        self.start_unhealthy = False
        self._servers = ExitStack()

    def engines(self, version: str) -> list[FakeEngine]:
        """The engines launched for ``version``, oldest first."""
        return [engine for spec, engine in self.launched if spec.version == version]

    def wait_launched(self, version: str, count: int = 1) -> FakeEngine:
        """The ``count``-th engine launched for ``version``, once it is."""
        wait_for(lambda: len(self.engines(version)) >= count, 10, f"launch {count} of version {version}", 0.02)
        return self.engines(version)[count - 1]

    async def launch(self, spec: EngineSpec) -> LaunchedEngine:
        if self.fail is not None:
            raise self.fail
        engine, port = FakeEngine(spec.served_name), free_port()
        if self.start_unhealthy:
            engine.healthy.clear()
        server = ExitStack()
        await asyncio.to_thread(server.enter_context, serving(engine, port))
        self._servers.callback(server.close)
        self.launched.append((spec, engine))
        return _FakeLaunched(engine, server, f"http://127.0.0.1:{port}")

    def close(self) -> None:
        """Stop what the gateway left running (it stops its engines when it stops)."""
        self._servers.close()


class _FakeLaunched:
    def __init__(self, engine: FakeEngine, server: ExitStack, url: str) -> None:
        self.engine = engine
        self.server = server
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    def exited(self) -> str | None:
        return "killed" if self.engine.killed.is_set() else None

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.close)
        self.engine._record("stopped", self.engine.base)
