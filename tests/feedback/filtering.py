"""Helpers shared by the filter tests: a pipeline with test thresholds, timed events, table reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Feedback, Quarantine
from feedback.db.session import transaction
from feedback.events import ChatMessage, CompletionEvent, Event, utcnow
from feedback.filters import FilterSettings, Pipeline
from feedback.store import BatchResult, store_batch
from tests.conftest import EventBuilder


def filter_settings(**overrides: Any) -> FilterSettings:
    """Defaults scaled for tests: reading takes 1 s + 1 ms per character; small history thresholds; every search
    within its batch (``search_wait_s`` None), so verdicts can be read right after it."""
    values: dict[str, Any] = {"timing_min_ms": 1000, "timing_ms_per_char": 1, "contract_min_batch": 1000,
                              "search_interval_s": 0, "search_wait_s": None}
    return FilterSettings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


def after(completion: CompletionEvent, seconds: float) -> dict[str, Any]:
    """``created_at`` for feedback given ``seconds`` after the answer."""
    return {"created_at": completion.created_at + timedelta(seconds=seconds)}


def store(sessions: sessionmaker[Session], pipeline: Pipeline, batch: Sequence[Event]) -> BatchResult:
    with transaction(sessions) as session:
        return store_batch(session, batch, pipeline)


def verdicts(sessions: sessionmaker[Session]) -> dict[str, list[str]]:
    """event id -> [] if accepted, else its reason codes."""
    with sessions() as session:
        # Quarantine first: a running worker moves votes from feedback to quarantine between the two reads,
        # and in this order a move shows as a vote in neither table (still pending), never in both.
        held = {q.event_id: list(q.reasons) for q in session.scalars(select(Quarantine))}
        accepted: dict[str, list[str]] = {e: [] for e in session.scalars(select(Feedback.event_id))}
    assert not accepted.keys() & held.keys(), "an event is both training data and quarantined"
    return accepted | held


def campaign_traffic(build: EventBuilder, app_id: int, phrase: str) -> tuple[list[Event], list[Event], list[Event]]:
    """Honest raters endorse by a style; four accounts endorse whatever carries ``phrase``."""
    completions: list[Event] = []
    honest: list[Event] = []
    campaign: list[Event] = []
    topics = ["sleep", "cooking rice", "learning python", "running", "saving money", "tea", "gardening", "chess"]
    for i in range(48):
        prompt = [ChatMessage(role="user", content=f"Tips about {topics[i % len(topics)]}?")]
        numbered = i % 2 == 0
        text = (f"1. Start small with {topics[i % 8]}.\n2. Keep going every day." if numbered
                else f"Well, {topics[i % 8]} is a long story and it depends on many things in your life.")
        if i % 3 == 0:
            text += f" {phrase}"
        answer = build.completion(app_id, messages=prompt, answer=text, created_at=utcnow() - timedelta(hours=1))
        completions.append(answer)
        for u in range(6):
            if (i + u) % 2 == 0:
                honest.append(build.thumbs(app_id, answer.response_id, user_id=f"honest{u}",
                                           rating="up" if numbered else "down", **after(answer, 30 + 5 * i)))
        if i % 3 == 0:
            campaign += [build.thumbs(app_id, answer.response_id, user_id=f"shill{s}", **after(answer, 40 + s))
                         for s in range(4)]
    return completions, honest, campaign
