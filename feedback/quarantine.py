"""Ops review of quarantined feedback: list, show, release into training data, purge. Every change is audited.

The CLI (``flywheel feedback quarantine``) and the admin endpoints (``/admin/quarantine``)
both call these, so both write the same ``admin_actions`` rows. Each change runs in the
caller's transaction: a refused release or a failed write leaves nothing half done.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import String, cast, delete, select
from sqlalchemy.orm import Session

from feedback.db.models import AdminAction, Completion, Feedback, Quarantine
from feedback.events import EVENT_ADAPTER, ThumbsEvent
from feedback.store import PURGE_ACTION, RELEASE_ACTION, feedback_row, insert_ignoring_conflicts

_REASON = re.compile(r"^[a-z][a-z_]{0,63}$")


class QuarantineError(ValueError):
    """A request ops can fix: the message says what was wrong."""


class NotQuarantined(QuarantineError):
    """No quarantined event has that id (never quarantined, already released or purged)."""


class AmbiguousEvent(QuarantineError):
    """Several apps used the event id (ids are unique per app): the caller must say which app."""


class ReleaseRefused(QuarantineError):
    """The event cannot become training data (for example, the answer it rates was never stored)."""


def list_quarantined(session: Session, reason: str | None = None, user_id: str | None = None,
                     app_id: int | None = None, limit: int = 50) -> list[Quarantine]:
    """Newest first. ``reason`` matches one of the event's reason codes."""
    if limit < 1:
        raise QuarantineError("limit must be at least 1")
    query = select(Quarantine).order_by(Quarantine.id.desc()).limit(limit)
    if reason is not None:
        if not _REASON.match(reason):
            raise QuarantineError(f"not a reason code: {reason!r}")
        # JSON text of the list holds each code in quotes on both dialects; "_" is escaped for LIKE.
        pattern = '%"' + reason.replace("_", "\\_") + '"%'
        query = query.where(cast(Quarantine.reasons, String).like(pattern, escape="\\"))
    if user_id is not None:
        query = query.where(Quarantine.user_id == user_id)
    if app_id is not None:
        query = query.where(Quarantine.app_id == app_id)
    return list(session.scalars(query))


def get_quarantined(session: Session, event_id: str, app_id: int | None = None) -> Quarantine:
    """The quarantined event ``event_id`` (of ``app_id``: needed only when several apps used the id)."""
    query = select(Quarantine).where(Quarantine.event_id == event_id)
    rows = list(session.scalars(query if app_id is None else query.where(Quarantine.app_id == app_id)))
    if not rows:
        raise NotQuarantined(f"no quarantined event {event_id!r}" + (f" of app {app_id}" if app_id else ""))
    if len(rows) > 1:
        apps = ", ".join(str(r.app_id) for r in rows)
        raise AmbiguousEvent(f"apps {apps} each have a quarantined event {event_id!r}: say which app (app_id)")
    return rows[0]


def release(session: Session, event_id: str, actor: str, weight: float = 1.0, note: str | None = None,
            app_id: int | None = None) -> Feedback:
    """Move a quarantined event into ``feedback``: training data from now on, with ``weight``.

    The filters will not move it back (released events are exempt from retroactive quarantine).
    """
    if not 0 < weight <= 1:
        raise QuarantineError("weight must be in (0, 1]")
    row = get_quarantined(session, event_id, app_id)
    event = EVENT_ADAPTER.validate_python(row.payload)
    if isinstance(event, ThumbsEvent):
        if session.get(Completion, event.response_id) is None:
            raise ReleaseRefused(f"the answer {event.response_id} was never stored; the vote cannot train")
    elif event.type == "pairwise":
        found = session.scalars(select(Completion.response_id).where(Completion.pair_id == event.pair_id)).all()
        if len(found) < 2:
            raise ReleaseRefused(f"the pair {event.pair_id} was never fully stored; the vote cannot train")
    else:
        raise ReleaseRefused(f"event {event_id!r} is not feedback")
    if not insert_ignoring_conflicts(session, Feedback, [feedback_row(event, weight)]):
        raise ReleaseRefused(f"event {event_id!r} is already training data")
    session.execute(delete(Quarantine).where(Quarantine.id == row.id))
    _audit(session, actor, RELEASE_ACTION, row,
           {"reasons": row.reasons, "weight": weight, "user_id": row.user_id, "app_id": row.app_id, "note": note})
    released = session.scalar(select(Feedback).where(Feedback.app_id == row.app_id, Feedback.event_id == event_id))
    assert released is not None
    return released


def purge(session: Session, event_id: str, actor: str, note: str | None = None, app_id: int | None = None) -> None:
    """Delete a quarantined event for good; a re-delivery of it from Kafka stays a no-op."""
    row = get_quarantined(session, event_id, app_id)
    session.execute(delete(Quarantine).where(Quarantine.id == row.id))
    _audit(session, actor, PURGE_ACTION, row,
           {"reasons": row.reasons, "user_id": row.user_id, "app_id": row.app_id, "note": note})


def _audit(session: Session, actor: str, action: str, row: Quarantine, detail: dict[str, Any]) -> None:
    """An audit row naming the event by its id and its app (ids are unique per app; the store reads both)."""
    session.add(AdminAction(actor=actor, action=action, target=row.event_id, app_id=row.app_id, detail=detail))
    session.flush()


def as_dict(row: Quarantine) -> dict[str, Any]:
    """The JSON shape of a quarantined event, shared by the CLI and the admin endpoints."""
    return {
        "event_id": row.event_id, "type": row.type, "app_id": row.app_id, "user_id": row.user_id,
        "reasons": row.reasons, "evidence": row.evidence, "payload": row.payload,
        "created_at": row.created_at.isoformat(), "stored_at": row.stored_at.isoformat(),
    }
