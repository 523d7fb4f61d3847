"""No poison pill: an event the database refuses goes to quarantine alone and never blocks the ones behind it.

The original bug: one ``\\u0000`` in an event made PostgreSQL refuse the worker's insert, and
the worker re-read the same batch every 2 s forever while every later event was acknowledged
and never stored. These tests send through the real broker into both databases.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Feedback, Quarantine
from feedback.events import ChatMessage, Event
from feedback.producer import EventProducer
from feedback.store import UNSTORABLE
from feedback.worker import Worker
from feedback.worker_settings import WorkerSettings
from tests.conftest import EventBuilder
from tests.feedback.test_kafka import NO_READING_TIME, metric, rows, run_worker_until

Settings = Callable[..., WorkerSettings]


def send(config: WorkerSettings, batch: list[Event]) -> None:
    producer = EventProducer(config)
    try:
        asyncio.run(producer.send_many(batch))
    finally:
        producer.close()


def quarantined(sessions: sessionmaker[Session]) -> dict[str, Quarantine]:
    with sessions() as session:
        return {row.event_id: row for row in session.scalars(select(Quarantine))}


def test_a_nul_character_no_longer_blocks_later_events(
    db_url: str, sessions: sessionmaker[Session], make_app: Callable[[str], int], settings: Settings,
    build: EventBuilder,
) -> None:
    config = settings(database_url=db_url, kafka_partitions=1)  # one partition: the later events queue behind
    app = make_app(db_url)
    poisoned = build.completion(app, messages=[ChatMessage(role="user", content="tell me\u0000more")])
    answered = build.completion(app)
    nul_vote = build.thumbs(app, answered.response_id, comment="bad\u0000comment")
    later = [build.completion(app) for _ in range(5)]
    send(config, [poisoned, answered, nul_vote, *later])
    split_before = metric("flywheel_worker_batches_total", result="split")
    postgres = db_url.startswith("postgresql")
    # PostgreSQL refuses NUL: the two events wait in quarantine, cleaned. SQLite holds a NUL: nothing to refuse.
    expected = {"completions": 6, "feedback": 0, "quarantine": 2} if postgres else \
        {"completions": 7, "feedback": 1, "quarantine": 0}

    running = run_worker_until(config, lambda: rows(db_url) == expected)

    assert running.error is None
    assert rows(db_url) == expected
    stored = quarantined(sessions)
    if postgres:
        assert {e: row.reasons for e, row in stored.items()} == {poisoned.event_id: [UNSTORABLE],
                                                                nul_vote.event_id: [UNSTORABLE]}
        assert "\\u0000 cannot be converted" in stored[poisoned.event_id].evidence[UNSTORABLE]["error"]
        assert stored[poisoned.event_id].payload["messages"][0]["content"] == "tell me\ufffdmore"
        assert stored[nul_vote.event_id].type == "thumbs" and stored[poisoned.event_id].type == "completion"
        assert metric("flywheel_worker_batches_total", result="split") > split_before

    # The next worker rebuilds its filters past the quarantined completion and goes on storing.
    more = build.completion(app)
    send(config, [more, build.thumbs(app, more.response_id, user_id="u2")])
    running = run_worker_until(config, lambda: rows(db_url)["feedback"] == expected["feedback"] + 1)
    assert running.error is None
    assert rows(db_url)["completions"] == expected["completions"] + 1


def refuse(db_url: str, table: str, user_id: str) -> None:
    """Make the database itself refuse rows of ``table`` for ``user_id``, as it refuses data it cannot hold."""
    engine = sa.create_engine(db_url)
    name = f"refuse_{table}"
    with engine.begin() as conn:
        if db_url.startswith("sqlite"):
            conn.execute(sa.text(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN NEW.user_id = '{user_id}' "
                                 "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
        else:
            conn.execute(sa.text(f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN IF NEW.user_id = "
                                 f"'{user_id}' THEN RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22000'; "
                                 "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            conn.execute(sa.text(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW "
                                 f"EXECUTE FUNCTION {name}()"))
    engine.dispose()


def test_a_refused_batch_is_split_until_the_refused_event_stands_alone(
    db_url: str, sessions: sessionmaker[Session], make_app: Callable[[str], int], settings: Settings,
    build: EventBuilder,
) -> None:
    refuse(db_url, "feedback", "refused")
    config = settings(database_url=db_url, kafka_partitions=1, worker_max_batch=500)
    app = make_app(db_url)
    answers = [build.completion(app) for _ in range(16)]
    votes = [build.thumbs(app, a.response_id, user_id=f"user-{i}") for i, a in enumerate(answers)]
    votes[11] = build.thumbs(app, answers[11].response_id, user_id="refused")
    send(config, [*answers, *votes])
    worker = Worker(config, NO_READING_TIME)
    split_before = metric("flywheel_worker_batches_total", result="split")
    quarantined_before = metric("flywheel_worker_unstorable_events_total", kind="thumbs", outcome="quarantined")
    try:
        while rows(db_url)["completions"] < 16 or rows(db_url)["feedback"] + rows(db_url)["quarantine"] < 16:
            worker.step()
    finally:
        worker.close()

    assert rows(db_url) == {"completions": 16, "feedback": 15, "quarantine": 1}
    [row] = quarantined(sessions).values()
    assert (row.event_id, row.reasons, row.user_id) == (votes[11].event_id, [UNSTORABLE], "refused")
    assert "refused by the test" in row.evidence[UNSTORABLE]["error"]
    assert metric("flywheel_worker_batches_total", result="split") > split_before
    assert metric("flywheel_worker_unstorable_events_total", kind="thumbs", outcome="quarantined") == \
        quarantined_before + 1
    with sessions() as session:
        assert set(session.scalars(select(Feedback.user_id))) == {f"user-{i}" for i in range(16) if i != 11}


def test_an_event_refused_even_in_quarantine_is_dropped_loudly(
    db_url: str, make_app: Callable[[str], int], settings: Settings, build: EventBuilder,
) -> None:
    for table in ("feedback", "quarantine"):
        refuse(db_url, table, "refused-everywhere")
    config = settings(database_url=db_url, kafka_partitions=1)
    app = make_app(db_url)
    answer = build.completion(app)
    doomed = build.thumbs(app, answer.response_id, user_id="refused-everywhere")
    after = build.completion(app)
    send(config, [answer, doomed, after, build.thumbs(app, after.response_id)])
    dropped_before = metric("flywheel_worker_unstorable_events_total", kind="thumbs", outcome="dropped")

    running = run_worker_until(config, lambda: rows(db_url)["feedback"] == 1)

    assert running.error is None
    assert rows(db_url) == {"completions": 2, "feedback": 1, "quarantine": 0}
    assert metric("flywheel_worker_unstorable_events_total", kind="thumbs", outcome="dropped") == dropped_before + 1
