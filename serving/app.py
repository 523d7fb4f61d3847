"""The gateway application: wiring, lifespan and the error envelope.

Errors use OpenAI's envelope (``{"error": {"message", "type", "code"}}``) so the official
client raises its usual exceptions with our message in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from feedback.db.session import make_engine, session_factory
from feedback.producer import BrokerUnavailable, EventProducer
from feedback.promotion import Promotion, RegistryError
from serving.champion import ChampionWatcher, NoChampion
from serving.deps import GatewayState, storable_body
from serving.engine import EngineClient, EngineError
from serving.metrics import REQUESTS
from serving.routers import admin_models, admin_quarantine, chat, feedback, health, models
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    settings = settings or ServingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = make_engine(settings.resolved_database_url)
        engine = EngineClient(settings.resolved_engine_url, settings.engine_timeout)
        producer = EventProducer(settings)
        sessions = session_factory(db)
        registry = Promotion(settings.resolved_mlflow_uri, settings.registered_model, sessions)
        watcher = ChampionWatcher(settings, engine, registry)
        app.state.gateway = GatewayState(settings, sessions, engine, producer, registry, watcher)
        await watcher.refresh()
        poller = asyncio.create_task(watcher.run(), name="champion-watcher")
        log.info("gateway ready on %s:%s, engine %s", settings.host, settings.port, settings.resolved_engine_url)
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await engine.close()
            await asyncio.to_thread(producer.close)
            db.dispose()

    app = FastAPI(title="Flywheel gateway", version="0.1.0", lifespan=lifespan, dependencies=[Depends(storable_body)])
    for router in (health.router, models.router, chat.router, feedback.router, admin_models.router,
                   admin_quarantine.router):
        app.include_router(router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        REQUESTS.labels(route=getattr(route, "path", "unmatched"), status=str(response.status_code)).inc()
        return response

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
        return _error(exc.status_code, str(exc.detail), kind.get(exc.status_code, "invalid_request_error"))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {err['msg']}" for err in exc.errors()
        )
        return _error(400, problems, "invalid_request_error")

    @app.exception_handler(EngineError)
    async def engine_error(_request: Request, exc: EngineError) -> JSONResponse:
        return _error(exc.status, str(exc), "invalid_request_error" if exc.status == 400 else "engine_error")

    @app.exception_handler(BrokerUnavailable)
    async def broker_error(_request: Request, exc: BrokerUnavailable) -> JSONResponse:
        return _error(503, f"could not record the event, nothing was accepted: {exc}", "service_unavailable")

    @app.exception_handler(RegistryError)
    async def registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
        return _error(409, str(exc), "invalid_request_error")

    @app.exception_handler(NoChampion)
    async def no_champion(_request: Request, exc: NoChampion) -> JSONResponse:
        return _error(503, str(exc), "service_unavailable")

    return app
