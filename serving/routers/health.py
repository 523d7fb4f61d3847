"""Liveness, readiness and metrics: unauthenticated, for load balancers and Prometheus."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from feedback.producer import broker_reachable
from serving.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when the engine answers, the broker takes connections and a champion is loaded."""
    engine_ok, broker_ok = await asyncio.gather(
        state.engine.healthy(), asyncio.to_thread(broker_reachable, state.settings)
    )
    route = state.watcher.current
    checks = {"engine": engine_ok, "broker": broker_ok, "registry": route is not None}
    ready = all(checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks,
            "model_version": route.version if route else None}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
