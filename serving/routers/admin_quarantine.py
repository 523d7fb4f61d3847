"""``/admin/quarantine``: ops review of quarantined feedback (admin keys only); every change is audited.

The database work is synchronous SQLAlchemy, so it runs in a worker thread; each change is
one transaction, so a refused request leaves nothing half done. Event ids are unique per
app: when several apps used one, ``app_id`` says which (else 409).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from feedback import quarantine
from feedback.db.session import transaction
from feedback.events import EventId
from serving.deps import AdminDep, StateDep
from serving.errors import responses
from serving.protocol import UtcDatetime

router = APIRouter(prefix="/admin/quarantine", tags=["admin"])

T = TypeVar("T")
EventPath = Annotated[EventId, Path(description="The quarantined event's id.")]
# App ids are the store's 32-bit integer keys; a larger number names no app and must not reach the database.
APP_ID_MAX = 2**31 - 1
AppQuery = Annotated[
    int | None, Query(ge=1, le=APP_ID_MAX, description="The event's app, when several apps used the id.")
]


class ReleaseRequest(BaseModel):
    weight: float = Field(default=1.0, gt=0, le=1, description="Training weight of the released vote.")
    note: str | None = Field(default=None, max_length=2000, description="Why, for the audit trail.")


class QuarantinedEvent(BaseModel):
    """A quarantined event, whole: why (reason codes and each one's evidence) and the event as sent."""

    model_config = ConfigDict(from_attributes=True)
    event_id: str
    type: str
    app_id: int
    user_id: str
    reasons: list[str]
    evidence: dict[str, Any]
    payload: dict[str, Any]
    created_at: UtcDatetime
    stored_at: UtcDatetime


class QuarantineList(BaseModel):
    items: list[QuarantinedEvent] = Field(description="Newest first.")


class Released(BaseModel):
    event_id: str
    app_id: int
    released: Literal[True] = True
    weight: float


class Purged(BaseModel):
    event_id: str
    app_id: int
    purged: Literal[True] = True


async def _run(state: StateDep, work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction in a thread; the module's errors become 4xx answers."""

    def call() -> T:
        with transaction(state.sessions) as session:
            return work(session)

    try:
        return await asyncio.to_thread(call)
    except quarantine.NotQuarantined as exc:
        raise HTTPException(404, str(exc)) from exc
    except (quarantine.ReleaseRefused, quarantine.AmbiguousEvent) as exc:
        raise HTTPException(409, str(exc)) from exc
    except quarantine.QuarantineError as exc:
        raise HTTPException(400, str(exc)) from exc


@router.get("", responses=responses(400, 401, 403))
async def list_quarantine(
    _admin: AdminDep,
    state: StateDep,
    reason: Annotated[str | None, Query(max_length=64, description="One reason code, e.g. too_fast.")] = None,
    user_id: Annotated[str | None, Query(max_length=256)] = None,
    app_id: Annotated[int | None, Query(ge=1, le=APP_ID_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> QuarantineList:
    rows = await _run(state, lambda s: [QuarantinedEvent.model_validate(r) for r in
                                        quarantine.list_quarantined(s, reason, user_id, app_id, limit)])
    return QuarantineList(items=rows)


@router.get("/{event_id}", responses=responses(400, 401, 403, 404, 409))
async def show_quarantined(
    event_id: EventPath, _admin: AdminDep, state: StateDep, app_id: AppQuery = None
) -> QuarantinedEvent:
    return await _run(state, lambda s: QuarantinedEvent.model_validate(quarantine.get_quarantined(s, event_id, app_id)))


@router.post("/{event_id}/release", responses=responses(400, 401, 403, 404, 409))
async def release_quarantined(
    event_id: EventPath, admin: AdminDep, state: StateDep, app_id: AppQuery = None,
    body: Annotated[ReleaseRequest | None, Body()] = None,
) -> Released:
    """Make the event training data (weight 1.0 unless given); 409 if the answer it rates was never stored."""
    request = body or ReleaseRequest()

    def work(session: Session) -> Released:
        row = quarantine.release(session, event_id, admin.actor, request.weight, request.note, app_id)
        return Released(event_id=row.event_id, app_id=row.app_id, weight=row.weight)

    return await _run(state, work)


@router.delete("/{event_id}", responses=responses(400, 401, 403, 404, 409))
async def purge_quarantined(event_id: EventPath, admin: AdminDep, state: StateDep, app_id: AppQuery = None) -> Purged:
    """Delete the event for good; a re-delivery from Kafka stays a no-op."""

    def work(session: Session) -> Purged:
        row = quarantine.get_quarantined(session, event_id, app_id)
        quarantine.purge(session, event_id, admin.actor, app_id=row.app_id)
        return Purged(event_id=event_id, app_id=row.app_id)

    return await _run(state, work)
