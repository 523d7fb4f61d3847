"""``POST /v1/feedback`` and ``/v1/feedback/batch``: thumbs and pairwise choices from apps.

202 means the broker has the event (``acks=all``). The gateway does not judge whether the
answer exists or belongs to the caller: it cannot see the store's latest state, and the
worker does that check on the same partition, after the completion it refers to.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException

from feedback.apps import Caller
from feedback.events import FeedbackEvent, FeedbackIn, PairwiseEvent, PairwiseFeedback, ThumbsEvent, ThumbsFeedback
from serving.deps import CallerDep, StateDep
from serving.metrics import FEEDBACK
from serving.protocol import FeedbackAccepted

router = APIRouter(tags=["feedback"])

MAX_BATCH = 1000


def _recorded(item: ThumbsFeedback | PairwiseFeedback, caller: Caller) -> FeedbackEvent:
    fields = {**item.model_dump(), "app_id": caller.app_id}
    return PairwiseEvent(**fields) if isinstance(item, PairwiseFeedback) else ThumbsEvent(**fields)


async def _send(state: StateDep, events: list[FeedbackEvent]) -> FeedbackAccepted:
    await state.producer.send_many(events)
    for event in events:
        FEEDBACK.labels(type=event.type).inc()
    return FeedbackAccepted(event_ids=[event.event_id for event in events])


@router.post("/v1/feedback", status_code=202)
async def send_feedback(
    item: Annotated[ThumbsFeedback | PairwiseFeedback, Body(discriminator="type")], caller: CallerDep, state: StateDep
) -> FeedbackAccepted:
    return await _send(state, [_recorded(item, caller)])


@router.post("/v1/feedback/batch", status_code=202)
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
