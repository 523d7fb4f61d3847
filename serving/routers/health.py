"""Liveness, readiness and metrics: unauthenticated, for load balancers and Prometheus."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from serving.deps import StateDep
from serving.errors import responses

router = APIRouter(tags=["health"])


class Alive(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, bool] = Field(description="the champion's engine answers, broker takes a write, registry "
                                                "champion loaded, outbox has room.")
    model_version: str | None = Field(description="The version answering now.")
    outbox_depth: int = Field(description="Acknowledged events waiting in the outbox for the broker.")


@router.get("/healthz", responses=responses())
async def healthz() -> Alive:
    return Alive()


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Not ready: the failing checks are false."},
                       **responses()})
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when the engine answers, a write to the broker is acknowledged, a champion is loaded and the outbox
    has room (a full one refuses events)."""
    route = state.watcher.current
    engine = route.engine.client if route is not None else state.engine  # the champion's: maybe a launched one
    engine_ok, broker_ok = await asyncio.gather(engine.healthy(), state.producer.probe())
    depth = state.outbox.depth
    checks = {"engine": engine_ok, "broker": broker_ok, "registry": route is not None,
              "outbox": depth < state.outbox.max_pending}
    ready = all(checks.values())
    body = Readiness(status="ready" if ready else "not ready", checks=checks,
                     model_version=route.version if route else None, outbox_depth=depth)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
                       **responses()})
async def metrics() -> PlainTextResponse:
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
