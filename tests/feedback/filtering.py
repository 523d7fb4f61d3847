"""Helpers shared by the filter tests: a pipeline with test thresholds, timed events, table reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Feedback, Quarantine
from feedback.db.session import transaction
from feedback.events import CompletionEvent, Event
from feedback.filters import FilterSettings, Pipeline
from feedback.store import BatchResult, store_batch


def filter_settings(**overrides: Any) -> FilterSettings:
    """Defaults scaled for tests: reading takes 1 s + 1 ms per character; small history thresholds."""
    values: dict[str, Any] = {"timing_min_ms": 1000, "timing_ms_per_char": 1, "contract_min_batch": 1000}
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
        accepted: dict[str, list[str]] = {e: [] for e in session.scalars(select(Feedback.event_id))}
        held = {q.event_id: list(q.reasons) for q in session.scalars(select(Quarantine))}
    assert not accepted.keys() & held.keys(), "an event is both training data and quarantined"
    return accepted | held
