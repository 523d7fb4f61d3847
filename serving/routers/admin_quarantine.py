"""``/admin/quarantine``: ops review of quarantined feedback (admin keys only); every change is audited.

The database work is synchronous SQLAlchemy, so it runs in a worker thread; each change is
one transaction, so a refused request leaves nothing half done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, HTTPException, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from feedback import quarantine
from feedback.db.session import transaction
from feedback.events import EventId
from serving.deps import AdminDep, StateDep

router = APIRouter(prefix="/admin/quarantine", tags=["admin"])

T = TypeVar("T")
EventPath = Annotated[EventId, Path(description="The quarantined event's id.")]


class ReleaseRequest(BaseModel):
    weight: float = Field(default=1.0, gt=0, le=1, description="Training weight of the released vote.")
    note: str | None = Field(default=None, max_length=2000, description="Why, for the audit trail.")


async def _run(state: StateDep, work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction in a thread; the module's errors become 4xx answers."""

    def call() -> T:
        with transaction(state.sessions) as session:
            return work(session)

    try:
        return await asyncio.to_thread(call)
    except quarantine.NotQuarantined as exc:
        raise HTTPException(404, str(exc)) from exc
    except quarantine.ReleaseRefused as exc:
        raise HTTPException(409, str(exc)) from exc
    except quarantine.QuarantineError as exc:
        raise HTTPException(400, str(exc)) from exc


@router.get("")
async def list_quarantine(
    _admin: AdminDep,
    state: StateDep,
    reason: Annotated[str | None, Query(max_length=64, description="One reason code, e.g. too_fast.")] = None,
    user_id: Annotated[str | None, Query(max_length=256)] = None,
    app_id: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    rows = await _run(state, lambda s: [quarantine.as_dict(r) for r in
                                        quarantine.list_quarantined(s, reason, user_id, app_id, limit)])
    return {"items": rows}


@router.get("/{event_id}")
async def show_quarantined(event_id: EventPath, _admin: AdminDep, state: StateDep) -> dict[str, Any]:
    return await _run(state, lambda s: quarantine.as_dict(quarantine.get_quarantined(s, event_id)))


@router.post("/{event_id}/release")
async def release_quarantined(
    event_id: EventPath, admin: AdminDep, state: StateDep, body: Annotated[ReleaseRequest | None, Body()] = None
) -> dict[str, Any]:
    request = body or ReleaseRequest()

    def work(session: Session) -> dict[str, Any]:
        row = quarantine.release(session, event_id, admin.actor, request.weight, request.note)
        return {"event_id": row.event_id, "released": True, "weight": row.weight}

    return await _run(state, work)


@router.delete("/{event_id}")
async def purge_quarantined(event_id: EventPath, admin: AdminDep, state: StateDep) -> dict[str, Any]:
    await _run(state, lambda s: quarantine.purge(s, event_id, admin.actor))
    return {"event_id": event_id, "purged": True}
