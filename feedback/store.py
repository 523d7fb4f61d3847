"""Idempotent writes of decoded events: the worker's half of "nothing lost, nothing twice".

Kafka delivers at least once (a crash between the database commit and the offset commit
re-delivers a batch), so every write here is keyed by the event's app and ``event_id`` and a
repeat is a no-op. Event ids are the apps' idempotency keys, so they are unique per app only:
another app's use of an id never turns a vote into a no-op.
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
from datetime import UTC, datetime
from typing import Any, Protocol, cast, runtime_checkable

from sqlalchemy import JSON, String, Table, any_, bindparam, func, select, union_all
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TEXT
from sqlalchemy.orm import Session

from feedback.db.models import AdminAction, App, Base, Completion, Feedback, Quarantine
from feedback.events import ChatMessage, CompletionEvent, Event, FeedbackEvent, PairwiseEvent, ThumbsEvent
from feedback.storable import replace_unstorable

log = logging.getLogger(__name__)

# Outcomes of one event, as counted in BatchResult and in the worker's metrics.
STORED = "stored"
ACCEPTED = "accepted"
QUARANTINED = "quarantined"
DUPLICATE = "duplicate"
INVALID = "invalid"
# The reason code of an event the database refused to store (see ``unstorable_row``).
UNSTORABLE = "unstorable"


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


EventKey = tuple[int, str]
"""(app id, event id): what identifies an event, since event ids are unique per app."""


def insert_ignoring_conflicts(
    session: Session, model: type[Base], rows: Sequence[dict[str, Any]], key: Sequence[str] = ("app_id", "event_id")
) -> set[tuple[Any, ...]]:
    """INSERT ... ON CONFLICT DO NOTHING of many rows in one statement; the ``key`` tuples written.

    Without a conflict target it covers every unique key ((app_id, event_id), and response_id
    for completions), which also closes the race of two workers storing one event during a
    rebalance. RETURNING tells which rows were written: the driver's rowcount is not
    reliable here (psycopg 3 under SQLAlchemy 2.1 reports -1). One multi-row statement per
    table and batch, not one per event: per-row statements cost the worker most of its time.
    """
    if not rows:
        return set()
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql" and len(rows) > 1:
        arrays = _as_arrays(session, cast(Table, model.__table__), rows)
        if arrays is not None:
            return _insert_arrays(session, cast(Table, model.__table__), arrays, key)
    # Into the table, not the ORM entity: the ORM's bulk insert splits the rows into one statement per run of
    # rows with the same columns set to None (a single answer has no pair id, a pairwise vote no rating), which on
    # a mixed stream meant hundreds of statements per batch. Core binds every row's None as NULL, as the ORM did.
    table = cast(Table, model.__table__)
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(table).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"no idempotent insert for the {dialect} dialect")
    columns = [table.c[name] for name in key]
    return {tuple(row) for row in session.execute(statement.returning(*columns), list(rows))}


def _as_arrays(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]] | None:
    """The rows as one list of values per column, in the table's column order, with the Python-side defaults
    (``stored_at``) filled in per row as SQLAlchemy fills them; JSON values serialized as the dialect serializes
    them. None if the rows do not all name the same columns of the table or a missing column's default is not a
    plain value or function (the multi-row VALUES statement then stores them)."""
    given = rows[0].keys()
    if any(row.keys() != given for row in rows) or not given <= set(table.c.keys()):
        return None
    dumps = getattr(session.get_bind().dialect, "_json_serializer", None) or json.dumps
    arrays: dict[str, list[Any]] = {}
    for column in table.c:
        if column.name in given:
            values = [row[column.name] for row in rows]
        elif column.default is None:
            continue  # the database's: an autoincrement id, a server default
        elif column.default.is_scalar:
            values = [column.default.arg] * len(rows)  # type: ignore[attr-defined]
        elif column.default.is_callable:
            values = [column.default.arg(None) for _ in rows]  # type: ignore[attr-defined]
        else:
            return None
        arrays[column.name] = [dumps(v) for v in values] if isinstance(column.type, JSON) else values
    return arrays


def _element_type(column_type: Any) -> Any:
    """The type an array of a column's values is bound as: JSON as its text, and text without the column's length,
    since a cast to ``varchar(n)[]`` would cut a longer value where the column refuses it (``DataError``)."""
    if isinstance(column_type, JSON | String):
        return TEXT()
    return column_type


def _insert_arrays(session: Session, table: Table, arrays: dict[str, list[Any]],
                   key: Sequence[str]) -> set[tuple[Any, ...]]:
    """PostgreSQL: ``INSERT ... SELECT FROM unnest(one array per column) WITH ORDINALITY ORDER BY ordinality ON
    CONFLICT DO NOTHING RETURNING key``: the rows, ids and RETURNING of the multi-row VALUES statement, in a
    statement whose text is the same for every batch. The VALUES statement's text grows with the batch (a bound
    parameter per row and column, 4,000 for a batch's answers), and psycopg converts every such text's placeholders
    in Python, uncached: on the worker benchmark that and its rendering cost 2 of the worker's 14 s. JSON travels as
    its text, cast to JSONB in the database as a JSONB parameter is."""
    names = list(arrays)
    parameters = [bindparam(f"a_{name}", values, type_=ARRAY(_element_type(table.c[name].type)))
                  for name, values in arrays.items()]
    rowset = func.unnest(*parameters).table_valued(*names, with_ordinality="ordinality").render_derived()
    picked = [sql_cast(rowset.c[name], JSONB) if isinstance(table.c[name].type, JSON) else rowset.c[name]
              for name in names]
    statement = postgresql.insert(table).from_select(names, select(*picked).order_by(rowset.c.ordinality)) \
        .on_conflict_do_nothing().returning(*[table.c[name] for name in key])
    return {tuple(row) for row in session.execute(statement)}


def completion_row(event: CompletionEvent) -> dict[str, Any]:
    """A served answer as a ``completions`` row."""
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
        "source": event.source,
        "created_at": event.created_at,
    }


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); make them comparable with the events' aware ones."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def event_from_feedback(row: Feedback) -> FeedbackEvent:
    """The event an accepted feedback row was stored from (the inverse of ``feedback_row``)."""
    common: dict[str, Any] = {"event_id": row.event_id, "app_id": row.app_id, "user_id": row.user_id,
                              "comment": row.comment, "source": row.source, "created_at": as_utc(row.created_at)}
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


def unstorable_row(event: Event, error: BaseException) -> dict[str, Any]:
    """A quarantine row for an event the database refused (a completion too): its text made storable, the
    refusal as evidence. The filters never saw it, and ``Pipeline.rebuild`` leaves it out of their history."""
    orig = getattr(error, "orig", None)  # the driver's own message (with PostgreSQL's DETAIL), not the SQL
    refusal = " ".join(str(orig).split()) if orig is not None else next(iter(str(error).splitlines()), "")
    return {
        "event_id": event.event_id,
        "type": event.type,
        "app_id": event.app_id,
        "user_id": replace_unstorable(event.user_id or "")[:256],
        "reasons": [UNSTORABLE],
        "evidence": {UNSTORABLE: {"error": replace_unstorable(f"{type(error).__name__}: {refusal}")[:1000]}},
        "payload": replace_unstorable(event.model_dump(mode="json")),
        "created_at": event.created_at,
    }


def find_verdict(session: Session, app_id: int, event_id: str) -> Feedback | Quarantine | None:
    """App ``app_id``'s event ``event_id`` as stored: accepted (``Feedback``), quarantined, or None (not yet)."""
    accepted = session.scalar(select(Feedback).where(Feedback.app_id == app_id, Feedback.event_id == event_id))
    if accepted is not None:
        return accepted
    return session.scalar(select(Quarantine).where(Quarantine.app_id == app_id, Quarantine.event_id == event_id))


# Admin actions the store must honour: a released event is exempt from retroactive quarantine,
# a purged one stays gone when Kafka re-delivers it.
RELEASE_ACTION = "quarantine.release"
PURGE_ACTION = "quarantine.purge"


def event_key(event: Event) -> EventKey:
    return event.app_id, event.event_id


def known_events(session: Session, event_ids: set[str]) -> set[EventKey]:
    """Events already stored in any table, or purged by ops, as (app, event id): a feedback event
    quarantined on its first delivery must stay a no-op even if it would be accepted now, and a
    purged one must not come back with a re-delivery. Machine feedback asks it too, to skip work done."""
    ids: Any = sorted(event_ids)
    if session.get_bind().dialect.name == "postgresql":
        # One array parameter, not one per id and table: the statement's text is then the same for every batch and
        # psycopg converts its placeholders once (see ``_insert_arrays``), not 2,000 of them per batch.
        ids = any_(bindparam("event_ids", ids, type_=ARRAY(String())))
        def named(column: Any) -> Any:
            return column == ids
    else:
        def named(column: Any) -> Any:
            return column.in_(ids)
    stored = [select(model.app_id, model.event_id).where(named(model.event_id))
              for model in (Completion, Feedback, Quarantine)]
    purged = select(AdminAction.app_id, AdminAction.target).where(
        AdminAction.action == PURGE_ACTION, named(AdminAction.target))
    # One statement, not four: on PostgreSQL each round trip with a batch's ids cost 5-17 ms under load.
    rows = cast(list[tuple[int | None, str]], session.execute(union_all(*stored, purged)).all())
    return {(app_id, event_id) for app_id, event_id in rows if app_id is not None}


def store_batch(session: Session, batch: Iterable[Event], judge: Judge | BatchJudge) -> BatchResult:
    """Store events inside the caller's transaction; feedback is judged in the order given (partition order).

    Every event is decided first, then written with one idempotent multi-row INSERT per
    table (completions first: feedback rows reference them). Judges therefore see the
    batch's completions through ``BatchJudge.completion_stored``, not through the database.
    A repeated (app, event id) never reaches the judge, so filters only ever see an event once.
    """
    batch = list(batch)
    hooks = judge if isinstance(judge, BatchJudge) else None
    if hooks is not None:
        hooks.begin(session, batch)
    result = BatchResult()
    seen = known_events(session, {e.event_id for e in batch}) if batch else set()
    completions = [e for e in batch if isinstance(e, CompletionEvent)]
    existing_apps = set(session.scalars(select(App.id).where(App.id.in_({e.app_id for e in completions}))))
    stored_responses = set(session.scalars(
        select(Completion.response_id).where(Completion.response_id.in_({e.response_id for e in completions}))
    ))
    pending: dict[type[Base], list[tuple[Event, str, dict[str, Any]]]] = {Completion: [], Feedback: [], Quarantine: []}
    for event in batch:
        if event_key(event) in seen:
            result.outcomes[(event.type, DUPLICATE)] += 1
            continue
        seen.add(event_key(event))
        if isinstance(event, CompletionEvent):
            if event.app_id not in existing_apps:
                log.warning("completion %s names unknown app %s; not stored", event.event_id, event.app_id)
                result.outcomes[(event.type, INVALID)] += 1
            elif event.response_id in stored_responses:
                result.outcomes[(event.type, DUPLICATE)] += 1  # another event id already stored this response
            else:
                stored_responses.add(event.response_id)
                pending[Completion].append((event, STORED, completion_row(event)))
                if hooks is not None:
                    hooks.completion_stored(event)
            continue
        judged = judge(session, event)
        if judged.accepted:
            pending[Feedback].append((event, ACCEPTED, feedback_row(event, judged.weight)))
        else:
            pending[Quarantine].append((event, QUARANTINED, quarantine_row(event, judged)))
    for model, rows in pending.items():
        written = insert_ignoring_conflicts(session, model, [row for _, _, row in rows])
        for event, outcome, _ in rows:
            result.outcomes[(event.type, outcome if event_key(event) in written else DUPLICATE)] += 1
    if hooks is not None:
        hooks.end(session)
    return result
