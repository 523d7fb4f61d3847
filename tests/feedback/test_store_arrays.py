"""On PostgreSQL a batch's rows travel as one array per column, and are stored as the multi-row VALUES statement stored
them; the batch's event ids as one array.

``insert_ignoring_conflicts`` used to send ``INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING RETURNING`` with
a bound parameter per row and column. Its text grows with the batch, so psycopg converted its placeholders in Python
on every batch, uncached (with SQLAlchemy's rendering, 2 of the worker's 14 s on the worker benchmark). It now sends
``INSERT ... SELECT FROM unnest(arrays) WITH ORDINALITY ORDER BY ordinality``, whose text is the same for every batch;
``known_events`` likewise compares with ``= ANY(array)`` instead of an IN list per table. These check, on both
databases (SQLite keeps the VALUES statement and the IN lists), that the rows, their order and ids, the keys
reported written, what a conflict leaves, and the refusals the worker sets aside are the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import Table, select, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import AdminAction, Base, Completion, Feedback, Quarantine, RewardScore
from feedback.events import ChatMessage
from feedback.store import (
    PURGE_ACTION,
    Verdict,
    completion_row,
    feedback_row,
    insert_ignoring_conflicts,
    known_events,
    quarantine_row,
)
from feedback.worker import refused
from tests.conftest import EventBuilder
from tests.feedback.test_store_insert_shape import mixed_rows, statements_on, stored

# Text an array literal must quote or escape, and text that is no text at all in one (the word NULL).
AWKWARD = ["", "NULL", "null", "a,b", "{x}", 'say "hi"', "back\\slash", " padded ", "line\nbreak", "tab\there",
           "ünïcödé", "emoji 🙂", "{\"k\": [1, 2]}", "'quoted'", "$1", "%s", "%(name)s"]


def values_insert(session: Session, model: type[Base], rows: list[dict[str, Any]],
                  key: tuple[str, ...] = ("app_id", "event_id")) -> set[tuple[Any, ...]]:
    """The former statement: one multi-row ``INSERT ... VALUES ... ON CONFLICT DO NOTHING RETURNING`` into the table."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    table = cast(Table, model.__table__)
    statement = dialect.insert(table).on_conflict_do_nothing().returning(*[table.c[name] for name in key])
    return {tuple(row) for row in session.execute(statement, rows)}


def awkward_rows(build: EventBuilder, app_id: int) -> dict[type[Base], list[dict[str, Any]]]:
    """Every column's awkward values: text an array literal quotes, NULLs in every nullable column and inside JSON,
    JSON that is null or a bare string, floats and integers at their edges, times in other zones."""
    answers, votes = [], []
    for n, text in enumerate(AWKWARD):
        extra: dict[str, Any] = {"finish_reason": text[:32] or None, "ttft_ms": None if n % 2 else 1e-9 * n,
                                 "prompt_tokens": None if n % 3 else 2**31 - 1, "completion_tokens": n or None,
                                 "params": {"text": text, "none": None, "list": [None, text, 1.5], "n": -n}}
        if n % 4 == 1:
            a, b = build.pair(app_id)
            answers += [a.model_copy(update={"answer": text, **extra}), b]
            votes.append(build.pairwise(app_id, a.pair_id or "", choice=["a", "b", "tie"][n % 3],
                                        comment=text or None, user_id=text or "u"))
        else:
            answer = build.completion(app_id, messages=[ChatMessage(role="user", content=text or "?")],
                                      created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=n),
                                      **extra)
            answers.append(answer.model_copy(update={"answer": text}))
            votes.append(build.thumbs(app_id, answer.response_id, rating="down" if n % 2 else "up",
                                      comment=None if n % 3 else text, user_id=text or "u"))
    verdicts = [Verdict(["bot_pattern"], {"bot_pattern": {"note": text, "none": None, "nested": {"x": [text]}}})
                for text in AWKWARD]
    return {Completion: [completion_row(a) for a in answers],
            Feedback: [feedback_row(v, [0.0, 1.0, 1e-300, 0.123456789012345][n % 4]) for n, v in enumerate(votes)],
            Quarantine: [quarantine_row(v, verdict) | ({"evidence": None} if n == 3 else {})
                         for n, (v, verdict) in enumerate(zip(votes, verdicts, strict=True))]}


@pytest.mark.parametrize("rows_of", [mixed_rows, awkward_rows])
def test_the_array_insert_stores_what_the_values_statement_stored(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder, rows_of: Any,
) -> None:
    rows = rows_of(build, app_id)
    arrays, arrays_written, arrays_statements = stored(sessions, insert_ignoring_conflicts, rows)
    former, former_written, _ = stored(sessions, values_insert, rows)

    assert arrays == former  # every column of every row, in id order, ids counted from the first
    assert arrays_written == former_written == [len(r) for r in rows.values()]
    assert arrays_statements == [1, 1, 1]


def test_the_array_statement_is_the_same_text_for_every_batch(
    db_url: str, sessions: sessionmaker[Session], app_id: int, build: EventBuilder,
) -> None:
    """What the change is for: on PostgreSQL the statement does not grow with the batch (psycopg converts it once)."""
    texts = []
    with sessions() as session:
        for size in (2, 7, 40):
            answers = [completion_row(build.completion(app_id)) for _ in range(size)]
            with statements_on(cast(Any, session.get_bind())) as seen:
                assert len(insert_ignoring_conflicts(session, Completion, answers)) == size
                known_events(session, {a["event_id"] for a in answers} | {"evt_none"})
            texts.append(seen)
        session.rollback()
    if db_url.startswith("postgresql"):
        assert texts[0] == texts[1] == texts[2]
        assert all(len(text) < 4096 for text in texts[0])  # psycopg's limit for caching a converted statement
    else:
        assert texts[0] != texts[2]  # SQLite keeps the VALUES statement


def test_a_conflict_leaves_the_first_row_and_reports_only_the_new_ones(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder,
) -> None:
    """Rows already stored (and a row twice in one batch) are skipped, as ON CONFLICT DO NOTHING skipped them."""
    answers = [build.completion(app_id) for _ in range(6)]
    votes = [build.thumbs(app_id, a.response_id, comment=f"first {n}") for n, a in enumerate(answers)]
    results = []
    for insert in (insert_ignoring_conflicts, values_insert):
        with sessions() as session:
            insert(session, Completion, [completion_row(a) for a in answers])
            first = insert(session, Feedback, [feedback_row(v, 0.5) for v in votes[:3]])
            again = [feedback_row(v.model_copy(update={"comment": "second"}), 0.9) for v in votes]
            second = insert(session, Feedback, [*again, again[4]])
            read = [(r.event_id, r.comment, r.weight) for r in session.scalars(select(Feedback).order_by(Feedback.id))]
            results.append((first, second, read))
            session.rollback()
    assert results[0] == results[1]
    first, second, read = results[0]
    assert first == {(app_id, v.event_id) for v in votes[:3]} and second == {(app_id, v.event_id) for v in votes[3:]}
    assert [comment for _, comment, _ in read] == ["first 0", "first 1", "first 2", "second", "second", "second"]


def test_the_scorers_rows_are_stored_as_before(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder,
) -> None:
    """The trainer's scorer stores its scores through the same insert (key: the response id, ``scored_at`` given, or
    left to its default per row)."""
    answers = [completion_row(build.completion(app_id)) for _ in range(5)]
    results = []
    for insert in (insert_ignoring_conflicts, values_insert):
        with sessions() as session:
            insert(session, Completion, answers)
            given = [{"response_id": a["response_id"], "score": n / 7 - 0.3, "run_id": "run", "model_accuracy": 0.7,
                      "scored_at": datetime(2026, 12, 4, tzinfo=UTC)} for n, a in enumerate(answers[:3])]
            first = insert(session, RewardScore, given, key=("response_id",))
            left = [{k: v for k, v in row.items() if k != "scored_at"} for row in given[1:]] + \
                [{"response_id": a["response_id"], "score": 1.5, "run_id": "run2", "model_accuracy": 0.5}
                 for a in answers[3:]]
            second = insert(session, RewardScore, left, key=("response_id",))
            read = [(r.response_id, r.score, r.run_id, r.model_accuracy, r.scored_at is not None)
                    for r in session.scalars(select(RewardScore).order_by(RewardScore.response_id))]
            results.append((first, second, read))
            session.rollback()
    assert results[0] == results[1]
    assert len(results[0][2]) == 5 and results[0][1] == {(a["response_id"],) for a in answers[3:]}


def test_known_events_finds_what_the_in_lists_found(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder,
) -> None:
    answers = [build.completion(app_id) for _ in range(4)]
    votes = [build.thumbs(app_id, a.response_id) for a in answers]
    asked = {a.event_id for a in answers[:3]} | {v.event_id for v in votes} | {"evt_purged", "evt_never", *AWKWARD}
    with sessions() as session:
        insert_ignoring_conflicts(session, Completion, [completion_row(a) for a in answers])
        insert_ignoring_conflicts(session, Feedback, [feedback_row(v, 1.0) for v in votes[:2]])
        insert_ignoring_conflicts(session, Quarantine, [quarantine_row(v, Verdict(["x"], {})) for v in votes[2:3]])
        session.add_all([AdminAction(actor="ops", action=PURGE_ACTION, target="evt_purged", app_id=app_id, detail={}),
                         AdminAction(actor="ops", action="quarantine.release", target=votes[3].event_id,
                                     app_id=app_id, detail={})])
        session.flush()
        former_statement = union_all(
            *[select(m.app_id, m.event_id).where(m.event_id.in_(asked)) for m in (Completion, Feedback, Quarantine)],
            select(AdminAction.app_id, AdminAction.target).where(AdminAction.action == PURGE_ACTION,
                                                                 AdminAction.target.in_(asked)))
        former = {(a, e) for a, e in session.execute(former_statement) if a is not None}
        found = known_events(session, asked)
        session.rollback()
    assert found == former
    assert found == {(app_id, a.event_id) for a in answers[:3]} | {(app_id, v.event_id) for v in votes[:3]} | \
        {(app_id, "evt_purged")}


@pytest.mark.parametrize("spoil", ["nul_in_text", "nul_in_json", "integer_out_of_range", "lone_surrogate",
                                   "too_long", "too_long_id"])
def test_what_the_database_refused_it_still_refuses(
    db_url: str, sessions: sessionmaker[Session], app_id: int, build: EventBuilder, spoil: str,
) -> None:
    """The worker sets aside a batch the database refuses (``worker.refused``) and retries one it could not reach:
    an event the VALUES statement had refused must still be refused, not turn into another error, nor be stored."""
    rows = [completion_row(build.completion(app_id)) for _ in range(3)]
    bad = rows[1]
    if spoil == "nul_in_text":
        bad["answer"] = "tell me\x00more"
    elif spoil == "nul_in_json":
        bad["messages"] = [{"role": "user", "content": "a\x00b"}]
    elif spoil == "integer_out_of_range":
        bad["prompt_tokens"] = 2**40
    elif spoil == "too_long":  # varchar(32): cut to fit, it would be stored as another value
        bad["finish_reason"] = "x" * 33
    elif spoil == "too_long_id":
        bad["response_id"] = bad["response_id"] + "x" * 48
    else:
        bad["answer"] = "half a pair \ud800"
    outcomes = []
    for insert in (insert_ignoring_conflicts, values_insert):
        with sessions() as session:
            try:
                outcomes.append(("stored", len(insert(session, Completion, rows))))
            except Exception as exc:  # a lone surrogate fails in the driver's encoding: a ValueError, unwrapped
                error = getattr(exc, "orig", None) or exc
                outcomes.append(("refused" if refused(exc) else "other", type(error).__name__))
            session.rollback()
    if outcomes[1][0] == "refused":
        assert outcomes[0][0] == "refused"
    else:
        assert outcomes[0] == outcomes[1]
    if db_url.startswith("postgresql") and spoil != "lone_surrogate":
        expected = "StringDataRightTruncation" if spoil.startswith("too_long") else outcomes[1][1]
        assert outcomes[0] == ("refused", expected)  # the same error as the VALUES statement's
    if db_url.startswith("postgresql") or spoil == "lone_surrogate":
        assert outcomes[0][0] == "refused"
