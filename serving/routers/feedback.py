"""``POST /v1/feedback`` and ``/v1/feedback/batch``: thumbs and pairwise choices from apps; ``GET`` a verdict.

202 means the broker has the event (``acks=all``): accepted for now, pending the worker's
verdict. The gateway does not judge whether the answer exists or belongs to the caller: it
cannot see the store's latest state, and the worker does that check on the same partition,
after the completion it refers to. ``GET /v1/feedback/{event_id}`` then tells the app its
own event's verdict (event ids are unique per app; another app's event is a 404).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path

from feedback.apps import Caller
from feedback.db.models import Feedback
from feedback.events import (
    EventId,
    FeedbackEvent,
    FeedbackIn,
    PairwiseEvent,
    PairwiseFeedback,
    ThumbsEvent,
    ThumbsFeedback,
)
from feedback.store import find_verdict
from serving.deps import CallerDep, StateDep, VoterDep
from serving.errors import responses
from serving.metrics import FEEDBACK
from serving.protocol import FeedbackAccepted, FeedbackVerdict

router = APIRouter(tags=["feedback"])

MAX_BATCH = 1000


def _recorded(item: ThumbsFeedback | PairwiseFeedback, caller: Caller) -> FeedbackEvent:
    fields = {**item.model_dump(), "app_id": caller.app_id}
    return PairwiseEvent(**fields) if isinstance(item, PairwiseFeedback) else ThumbsEvent(**fields)


async def _send(state: StateDep, events: list[FeedbackEvent], once: bool = False) -> FeedbackAccepted:
    """Record and count ``events``; ``once``: the single vote of a feedback token (409 if already recorded)."""
    await (state.record_once(events[0]) if once else state.record(events))
    for event in events:
        FEEDBACK.labels(type=event.type).inc()
    return FeedbackAccepted(event_ids=[event.event_id for event in events])


@router.post("/v1/feedback", status_code=202, responses=responses(400, 401, 403, 409, 429, 503))
async def send_feedback(
    item: Annotated[ThumbsFeedback | PairwiseFeedback, Body(discriminator="type")], voter: VoterDep, state: StateDep
) -> FeedbackAccepted:
    """With an app key, or with the answer's ``flywheel.feedback_token`` (from a browser) for its one vote: a
    thumbs on its response or a choice on its pair (403 for anything else, 409 once that vote is recorded; the
    event id is then the token's own)."""
    grant = voter.grant
    if grant is None:
        return await _send(state, [_recorded(item, voter.caller)])
    voted_on = item.pair_id if isinstance(item, PairwiseFeedback) else item.response_id
    if voted_on != grant.target:
        raise HTTPException(403, f"this feedback token allows one vote on {grant.target}, not on {voted_on}")
    return await _send(state, [_recorded(item.model_copy(update={"event_id": grant.event_id}), voter.caller)],
                       once=True)


@router.post("/v1/feedback/batch", status_code=202, responses=responses(400, 401, 429, 503))
async def send_feedback_batch(
    items: Annotated[list[FeedbackIn], Body(min_length=1, max_length=MAX_BATCH)],
    caller: CallerDep,
    state: StateDep,
) -> FeedbackAccepted:
    """All or nothing: a batch with one invalid event is refused whole, so a retry is safe."""
    ids = [item.event_id for item in items]
    if len(set(ids)) != len(ids):
        raise HTTPException(400, "event_id values repeat within the batch; each event needs its own")
    return await _send(state, [_recorded(item, caller) for item in items])


@router.get("/v1/feedback/{event_id}", responses=responses(400, 401, 404, 429))
async def feedback_verdict(
    event_id: Annotated[EventId, Path(description="The id the 202 named.")], caller: CallerDep, state: StateDep
) -> FeedbackVerdict:
    """This app's event: ``accepted`` (with its training weight), ``quarantined`` (with its reason codes) or
    ``pending`` (acknowledged by this gateway, not judged yet). 404 for anything else, another app's event
    included: this gateway remembers the last events it acknowledged, not every gateway's."""

    def lookup() -> FeedbackVerdict | None:
        with state.sessions() as session:
            row = find_verdict(session, caller.app_id, event_id)
        if row is None:
            return None
        if isinstance(row, Feedback):
            return FeedbackVerdict(event_id=event_id, status="accepted", weight=row.weight)
        return FeedbackVerdict(event_id=event_id, status="quarantined", reasons=row.reasons)

    verdict = await asyncio.to_thread(lookup)
    if verdict is not None:
        return verdict
    if (caller.app_id, event_id) in state.sent:
        return FeedbackVerdict(event_id=event_id, status="pending")
    raise HTTPException(404, f"this app has no feedback event {event_id!r} (or sent it through another gateway "
                             "and it is not stored yet)")
