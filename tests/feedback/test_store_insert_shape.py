"""The idempotent insert writes a batch's rows of mixed shapes in one statement, and writes what the ORM did.

Rows of one table differ in which columns are None (a single answer has no pair id; thumbs
have a rating, pairwise votes a choice). Through the ORM's bulk insert, SQLAlchemy groups
consecutive rows by the columns that are not None, so alternating shapes cost one INSERT (and
one splice of the RETURNING rows, quadratic in the batch) per run of a shape: on the worker
benchmark's stream, about 200 statements per table and batch and 40 % of the worker's time.
``insert_ignoring_conflicts`` inserts into the table instead (Core), one statement for every
row; this checks the two store the same rows, in the same order, with the same ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Base, Completion, Feedback, Quarantine
from feedback.events import CompletionEvent, FeedbackEvent
from feedback.store import Verdict, completion_row, feedback_row, insert_ignoring_conflicts, quarantine_row
from tests.conftest import EventBuilder


def orm_insert(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """The former statement: the same idempotent INSERT, through the ORM entity."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(model).on_conflict_do_nothing().returning(
        model.__table__.c.app_id, model.__table__.c.event_id)
    return {tuple(row) for row in session.execute(statement, rows)}


def mixed_rows(build: EventBuilder, app_id: int) -> dict[type[Base], list[dict[str, Any]]]:
    """Single answers and pairs, thumbs and pairwise votes (with and without a comment), interleaved."""
    answers: list[CompletionEvent] = []
    votes: list[FeedbackEvent] = []
    for n in range(30):
        if n % 2:
            a, b = build.pair(app_id)
            answers += [a, b]
            votes.append(build.pairwise(app_id, a.pair_id or "", choice="a", comment="ok" if n % 3 else None))
        else:
            answer = build.completion(app_id)
            answers.append(answer)
            votes.append(build.thumbs(app_id, answer.response_id, rating="up" if n % 4 else "down"))
    verdict = Verdict(["bot_pattern"], {"bot_pattern": {"votes": 9, "note": None}})
    return {Completion: [completion_row(a) for a in answers],
            Feedback: [feedback_row(v, 0.5 + n / 100) for n, v in enumerate(votes[:20])],
            Quarantine: [quarantine_row(v, verdict) for v in votes[20:]]}


@contextmanager
def statements_on(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: Any, **_: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def stored(sessions: sessionmaker[Session],
           insert: Callable[[Session, type[Base], list[dict[str, Any]]], set[tuple[Any, ...]]],
           rows: dict[type[Base], list[dict[str, Any]]]) -> tuple[list[Any], list[int], list[int]]:
    """Insert every table's rows (and their first five again: conflicts) and read each table back whole in id
    order (completions have no id: by response id), ids counted from the first and without the ``stored_at``
    stamp; with the number of keys reported
    written and of statements, per table. Rolled back, so the other insert runs on the same empty tables."""
    session = sessions()
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    written, statements, tables = [], [], []
    try:
        for model, table_rows in rows.items():
            with statements_on(engine) as seen:
                written.append(len(insert(session, model, table_rows)))
                statements.append(len(seen))
            assert not insert(session, model, table_rows[:5])  # already there: nothing written
            table = model.__table__
            order = table.c.id if "id" in table.c else next(iter(table.primary_key))
            read = [dict(row._mapping) for row in session.execute(select(table).order_by(order))]
            first = {"id": read[0]["id"]} if "id" in table.c else {}
            tables.append([row | {k: row[k] - v for k, v in first.items()} | {"stored_at": None} for row in read])
    finally:
        session.rollback()
        session.close()
    return tables, written, statements


def test_the_insert_stores_what_the_orm_stored_in_one_statement(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder,
) -> None:
    rows = mixed_rows(build, app_id)
    fast, fast_written, fast_statements = stored(sessions, insert_ignoring_conflicts, rows)
    former, former_written, former_statements = stored(sessions, orm_insert, rows)

    assert fast == former
    assert fast_written == former_written == [len(r) for r in rows.values()]
    assert fast_statements == [1, 1, 1]
    assert min(former_statements[:2]) > 5  # answers and votes do alternate shapes: the test would see a regression
