"""Idempotent writes of decoded events: the worker's half of "nothing lost, nothing twice".

Kafka delivers at least once (a crash between the database commit and the offset commit
re-delivers a batch), so every write here is keyed by ``event_id`` and a repeat is a no-op.
Feedback is judged before it is stored (``feedback.filters`` builds the judge): accepted
feedback becomes training data, the rest goes to quarantine whole, with reason codes, so
ops can inspect or release it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from feedback.db.models import AdminAction, App, Base, Completion, Feedback, Quarantine
from feedback.events import ChatMessage, CompletionEvent, Event, FeedbackEvent, PairwiseEvent, ThumbsEvent

log = logging.getLogger(__name__)

# Outcomes of one event, as counted in BatchResult and in the worker's metrics.
STORED = "stored"
ACCEPTED = "accepted"
QUARANTINED = "quarantined"
DUPLICATE = "duplicate"
INVALID = "invalid"


@dataclass(frozen=True)
class Verdict:
    """What the filters decided about one feedback event: no reasons means accepted, with ``weight``."""

    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0

    @property
    def accepted(self) -> bool:
        return not self.reasons


Judge = Callable[[Session, FeedbackEvent], Verdict]


@runtime_checkable
class BatchJudge(Protocol):
    """A judge that also sees the batch around its events (the filter pipeline).

    ``begin`` sees the whole batch before any write (to load what its events refer to),
    ``completion_stored`` each completion as it is written (feedback later in the batch may
    name it), and ``end`` runs after the last event, inside the same transaction, so
    anything it writes (alerts, retroactive quarantine) commits or rolls back with the batch.
    """

    def __call__(self, session: Session, event: FeedbackEvent) -> Verdict: ...

    def begin(self, session: Session, batch: Sequence[Event]) -> None: ...

    def completion_stored(self, event: CompletionEvent) -> None: ...

    def end(self, session: Session) -> None: ...


@dataclass
class BatchResult:
    """How many events of each kind ended in each outcome; feeds logs and metrics."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def count(self, outcome: str) -> int:
        return sum(n for (_kind, out), n in self.outcomes.items() if out == outcome)

    @property
    def completions(self) -> int:
        return self.count(STORED)

    @property
    def accepted(self) -> int:
        return self.count(ACCEPTED)

    @property
    def quarantined(self) -> int:
        return self.count(QUARANTINED)

    @property
    def duplicates(self) -> int:
        return self.count(DUPLICATE)

    @property
    def invalid(self) -> int:
        return self.count(INVALID)


def prompt_hash(messages: Sequence[ChatMessage]) -> str:
    """SHA-256 of the messages as canonical JSON, so answers to the same prompt group together."""
    canonical = json.dumps(
        [m.model_dump(mode="json") for m in messages], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def insert_ignoring_conflicts(session: Session, model: type[Base], row: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect; True if a row was written.

    Without a conflict target it covers every unique key (event_id, and response_id for
    completions), which also closes the race of two workers storing one event during a
    rebalance. RETURNING tells whether the row was written: the driver's rowcount is not
    reliable here (psycopg 3 under SQLAlchemy 2.1 reports -1).
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(model).values(row).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(model).values(row).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"no idempotent insert for the {dialect} dialect")
    return session.execute(statement.returning(literal(1))).first() is not None


def _completion_row(event: CompletionEvent) -> dict[str, Any]:
    return {
        "response_id": event.response_id,
        "event_id": event.event_id,
        "pair_id": event.pair_id,
        "app_id": event.app_id,
        "user_id": event.user_id,
        "model_version": event.model_version,
        "messages": [m.model_dump(mode="json") for m in event.messages],
        "prompt_hash": prompt_hash(event.messages),
        "answer": event.answer,
        "finish_reason": event.finish_reason,
        "params": event.params,
        "latency_ms": event.latency_ms,
        "ttft_ms": event.ttft_ms,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "created_at": event.created_at,
    }


def feedback_row(event: FeedbackEvent, weight: float) -> dict[str, Any]:
    """Accepted feedback: training data, counted with ``weight`` (the rater's reliability)."""
    return {
        "event_id": event.event_id,
        "type": event.type,
        "app_id": event.app_id,
        "user_id": event.user_id,
        "response_id": event.response_id if isinstance(event, ThumbsEvent) else None,
        "pair_id": event.pair_id if isinstance(event, PairwiseEvent) else None,
        "rating": event.rating if isinstance(event, ThumbsEvent) else None,
        "choice": event.choice if isinstance(event, PairwiseEvent) else None,
        "comment": event.comment,
        "correction": event.correction if isinstance(event, ThumbsEvent) else None,
        "weight": weight,
        "created_at": event.created_at,
    }


def event_from_feedback(row: Feedback) -> FeedbackEvent:
    """The event an accepted feedback row was stored from (the inverse of ``feedback_row``)."""
    common: dict[str, Any] = {"event_id": row.event_id, "app_id": row.app_id, "user_id": row.user_id,
                              "comment": row.comment, "created_at": row.created_at}
    if row.type == "thumbs":
        return ThumbsEvent.model_validate(
            common | {"response_id": row.response_id, "rating": row.rating, "correction": row.correction}
        )
    return PairwiseEvent.model_validate(common | {"pair_id": row.pair_id, "choice": row.choice})


def quarantine_row(event: FeedbackEvent, judged: Verdict) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "type": event.type,
        "app_id": event.app_id,
        "user_id": event.user_id,
        "reasons": judged.reasons,
        "evidence": judged.evidence,
        "payload": event.model_dump(mode="json"),
        "created_at": event.created_at,
    }


# Admin actions the store must honour: a released event is exempt from retroactive quarantine,
# a purged one stays gone when Kafka re-delivers it.
RELEASE_ACTION = "quarantine.release"
PURGE_ACTION = "quarantine.purge"


def _known_event_ids(session: Session, event_ids: set[str]) -> set[str]:
    """Event ids already stored in any table, or purged by ops: a feedback event quarantined on
    its first delivery must stay a no-op even if it would be accepted now, and a purged one
    must not come back with a re-delivery."""
    known: set[str] = set()
    for model in (Completion, Feedback, Quarantine):
        known.update(session.scalars(select(model.event_id).where(model.event_id.in_(event_ids))))
    purged = select(AdminAction.target).where(AdminAction.action == PURGE_ACTION, AdminAction.target.in_(event_ids))
    known.update(session.scalars(purged))
    return known


def store_batch(session: Session, batch: Iterable[Event], judge: Judge | BatchJudge) -> BatchResult:
    """Store events in the order given (partition order), inside the caller's transaction.

    Writes go straight to the database (Core statements), so a completion earlier in the
    batch is visible when feedback on it later in the same batch is judged. A repeated
    event id never reaches the judge, so filters only ever see an event once.
    """
    batch = list(batch)
    hooks = judge if isinstance(judge, BatchJudge) else None
    if hooks is not None:
        hooks.begin(session, batch)
    result = BatchResult()
    seen = _known_event_ids(session, {e.event_id for e in batch}) if batch else set()
    completion_apps = {e.app_id for e in batch if isinstance(e, CompletionEvent)}
    existing_apps = (
        set(session.scalars(select(App.id).where(App.id.in_(completion_apps)))) if completion_apps else set()
    )
    for event in batch:
        if event.event_id in seen:
            result.outcomes[(event.type, DUPLICATE)] += 1
            continue
        seen.add(event.event_id)
        if isinstance(event, CompletionEvent):
            if event.app_id not in existing_apps:
                log.warning("completion %s names unknown app %s; not stored", event.event_id, event.app_id)
                outcome = INVALID
            elif insert_ignoring_conflicts(session, Completion, _completion_row(event)):
                outcome = STORED
                if hooks is not None:
                    hooks.completion_stored(event)
            else:
                outcome = DUPLICATE  # another event id already stored this response id
        else:
            judged = judge(session, event)
            if judged.accepted:
                written = insert_ignoring_conflicts(session, Feedback, feedback_row(event, judged.weight))
                outcome = ACCEPTED if written else DUPLICATE
            else:
                written = insert_ignoring_conflicts(session, Quarantine, quarantine_row(event, judged))
                outcome = QUARANTINED if written else DUPLICATE
        result.outcomes[(event.type, outcome)] += 1
    if hooks is not None:
        hooks.end(session)
    return result
