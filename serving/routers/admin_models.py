"""``/admin/models``: versions, promote, rollback, history. Admin keys only; every move is audited.

The gateway that takes a promotion switches at once; every other gateway follows within
its poll interval, since all of them read the same registry alias.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Body, Query

from registry.promotion import VersionInfo
from serving.deps import AdminDep, StateDep
from serving.errors import responses
from serving.protocol import AliasMoveOut, AliasMoveRequest, ChampionMoved

router = APIRouter(prefix="/admin/models", tags=["admin"])

MoveBody = Annotated[AliasMoveRequest | None, Body(description="Optional: why, for the audit trail.")]


@router.get("", responses=responses(401, 403))
async def list_versions(_admin: AdminDep, state: StateDep) -> list[VersionInfo]:
    return await asyncio.to_thread(state.registry.list_versions)


@router.get("/history", responses=responses(400, 401, 403))
async def history(
    _admin: AdminDep, state: StateDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[AliasMoveOut]:
    moves = await asyncio.to_thread(state.registry.history, limit)
    return [AliasMoveOut.model_validate(m, from_attributes=True) for m in moves]


@router.post("/{version}/promote", responses=responses(400, 401, 403, 409))
async def promote(version: str, admin: AdminDep, state: StateDep, body: MoveBody = None) -> ChampionMoved:
    """Make ``version`` the champion; 409 if it does not exist or already is."""
    reason = body.reason if body else None
    await asyncio.to_thread(state.registry.promote, version, admin.actor, reason)
    route = await state.watcher.refresh()
    return ChampionMoved(champion=version, serving=route.version if route else "")


@router.post("/rollback", responses=responses(400, 401, 403, 409))
async def rollback(admin: AdminDep, state: StateDep, body: MoveBody = None) -> ChampionMoved:
    """Return the champion to the version it replaced; 409 if there is none."""
    version = await asyncio.to_thread(state.registry.rollback, admin.actor, body.reason if body else None)
    route = await state.watcher.refresh()
    return ChampionMoved(champion=version, serving=route.version if route else "")
