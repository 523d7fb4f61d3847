"""The gateway application: wiring and lifespan. Errors are OpenAI's envelope (``serving.errors``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response

from feedback.db.session import make_engine, session_factory
from feedback.outbox import Outbox, Relay
from feedback.producer import EventProducer
from registry.canary_judge import CanaryJudge
from registry.promotion import Promotion
from serving import live
from serving.champion import ChampionWatcher
from serving.deps import GatewayState, storable_body
from serving.engine import EngineClient
from serving.engines import EngineLauncher
from serving.errors import install_error_handlers
from serving.feedback_tokens import FeedbackTokens
from serving.metrics import REQUESTS
from serving.routers import admin_models, admin_quarantine, chat, feedback, health, models
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


def create_app(settings: ServingSettings | None = None, launcher: EngineLauncher | None = None) -> FastAPI:
    """The gateway; ``launcher`` starts engines for full-model versions (None: such versions fail to load)."""
    settings = settings or ServingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = make_engine(settings.resolved_database_url)
        engine = EngineClient(settings.resolved_engine_url, settings.engine_timeout)
        producer = EventProducer(settings)
        outbox = Outbox(settings.resolved_outbox_path, settings.outbox_max_events, settings.outbox_retain_s)
        relay = Relay(outbox, producer).start()  # also delivers what a previous run left in the file
        sessions = session_factory(db)
        registry = Promotion(settings.resolved_mlflow_uri, settings.registered_model, sessions)
        watcher = ChampionWatcher(settings, engine, registry, launcher)
        tokens = FeedbackTokens(settings.feedback_token_key(), settings.feedback_token_ttl_s)
        app.state.gateway = GatewayState(settings, sessions, engine, producer, outbox, relay, registry, watcher,
                                         tokens)
        await watcher.refresh()
        poller = asyncio.create_task(watcher.run(), name="champion-watcher")
        tasks = [poller, asyncio.create_task(watcher.unload_retired(), name="adapter-unloader"),
                 asyncio.create_task(live.publish(watcher, settings.live_numbers_seconds), name="live-numbers")]
        if settings.canary_check_seconds > 0:
            judge = CanaryJudge(registry, settings.canary_rule)
            tasks.append(asyncio.create_task(live.judge(judge, watcher, settings.canary_check_seconds),
                                             name="canary-judge"))
        log.info("gateway ready on %s:%s, engine %s", settings.host, settings.port, settings.resolved_engine_url)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await watcher.close()  # the engines it launched
            await engine.close()
            await asyncio.to_thread(relay.stop)
            outbox.close()
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

    install_error_handlers(app)
    return app
