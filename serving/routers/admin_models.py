"""``/admin/models``: versions, promote, rollback, history. Admin keys only; every move is audited.

The gateway that takes a promotion switches at once; every other gateway follows within
its poll interval, since all of them read the same registry alias.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from feedback.promotion import VersionInfo
from serving.deps import AdminDep, StateDep
from serving.protocol import AliasMoveOut, AliasMoveRequest

router = APIRouter(prefix="/admin/models", tags=["admin"])


@router.get("")
async def list_versions(_admin: AdminDep, state: StateDep) -> list[VersionInfo]:
    return await asyncio.to_thread(state.registry.list_versions)


@router.get("/history")
async def history(
    _admin: AdminDep, state: StateDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[AliasMoveOut]:
    moves = await asyncio.to_thread(state.registry.history, limit)
    return [AliasMoveOut.model_validate(m, from_attributes=True) for m in moves]


@router.post("/{version}/promote")
async def promote(version: str, body: AliasMoveRequest, admin: AdminDep, state: StateDep) -> dict[str, str]:
    await asyncio.to_thread(state.registry.promote, version, admin.actor, body.reason)
    route = await state.watcher.refresh()
    return {"champion": version, "serving": route.version if route else ""}


@router.post("/rollback")
async def rollback(body: AliasMoveRequest, admin: AdminDep, state: StateDep) -> dict[str, str]:
    version = await asyncio.to_thread(state.registry.rollback, admin.actor, body.reason)
    route = await state.watcher.refresh()
    return {"champion": version, "serving": route.version if route else ""}
