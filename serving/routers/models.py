"""``GET /v1/models``: the one public model id, and which registry version answers now."""

from __future__ import annotations

import time

from fastapi import APIRouter

from serving.deps import CallerDep, StateDep
from serving.errors import responses
from serving.protocol import ModelCard, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", responses=responses(401, 429, 503))
async def list_models(_caller: CallerDep, state: StateDep) -> ModelList:
    route = state.watcher.route
    card = ModelCard(id=state.settings.public_model, created=int(time.time()),
                     flywheel={"model_version": route.version})
    return ModelList(data=[card])
