"""Worker replicas in one consumer group on the real broker give the verdicts of one worker.

One rater's votes land on both partitions (events are keyed by response), so each replica
sees about half of them: too few for either to condemn alone. Flags and histories are shared
through the database and one replica holds the search lease (``feedback/filters/replicas.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kafka.partitioner.default import murmur2
from sqlalchemy import select

from feedback.db.models import FlaggedRater, Quarantine
from feedback.db.session import make_engine, session_factory
from feedback.events import CompletionEvent, Event
from feedback.producer import EventProducer
from feedback.worker import Worker
from feedback.worker_settings import WorkerSettings
from tests.conftest import EventBuilder
from tests.feedback.filtering import after, filter_settings
from tests.feedback.test_filters_worker import verdicts_at
from tests.feedback.test_kafka import RunningWorker, wait_until

FILTERS = filter_settings(timing_min_ms=0, timing_ms_per_char=0, bot_min_votes=9, velocity_user_max=1000)
PARTITIONS = [0, 1]


def partition_of(event: Event) -> int:
    """The partition kafka-python's producer puts the event in (its default partitioner: murmur2 of the key)."""
    return PARTITIONS[(murmur2(event.key) & 0x7FFFFFFF) % len(PARTITIONS)]


def answers_on_each_partition(build: EventBuilder, app_id: int, per_partition: int) -> list[CompletionEvent]:
    """Answers alternating between the two partitions, ``per_partition`` on each."""
    by_partition: dict[int, list[CompletionEvent]] = {p: [] for p in PARTITIONS}
    while min(map(len, by_partition.values())) < per_partition:
        answer = build.completion(app_id)
        if len(by_partition[partition_of(answer)]) < per_partition:
            by_partition[partition_of(answer)].append(answer)
    return [a for pair in zip(*by_partition.values(), strict=True) for a in pair]


def rows_at(url: str, model: Any) -> list[Any]:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(model)))
    finally:
        engine.dispose()


def test_a_rater_flagged_by_one_replica_is_quarantined_on_both(
    db_url: str, make_app: Callable[..., int], settings: Callable[..., WorkerSettings], build: EventBuilder,
) -> None:
    app_id = make_app(db_url, "app")
    config = settings(database_url=db_url, kafka_partitions=len(PARTITIONS), worker_max_batch=4)
    first, later = answers_on_each_partition(build, app_id, 5), answers_on_each_partition(build, app_id, 3)
    honest = [build.thumbs(app_id, a.response_id, user_id=f"h{n % 3}", rating="up" if n % 2 else "down",
                           **after(a, 20)) for n, a in enumerate(first + later)]
    bot_first = [build.thumbs(app_id, a.response_id, user_id="bot", **after(a, 25)) for a in first]
    bot_later = [build.thumbs(app_id, a.response_id, user_id="bot", **after(a, 25)) for a in later]
    assert {partition_of(e) for e in bot_first} == {partition_of(e) for e in bot_later} == set(PARTITIONS)

    replicas = [RunningWorker(Worker(config, FILTERS)) for _ in range(2)]
    producer = EventProducer(config)
    try:
        wait_until(lambda: all(len(r.worker.consumer.assignment()) == 1 for r in replicas), timeout=60)
        # 10 votes, 5 per replica: only a replica that sees the other's votes reaches bot_min_votes (9)
        asyncio.run(producer.send_many([*first, *honest[: len(first)], *bot_first]))
        wait_until(lambda: all(verdicts_at(db_url).get(e.event_id) == ["bot_pattern"] for e in bot_first), timeout=60)
        asyncio.run(producer.send_many([*later, *honest[len(first):], *bot_later]))
        wait_until(lambda: all(verdicts_at(db_url).get(e.event_id) == ["bot_pattern"] for e in bot_later), timeout=60)
        wait_until(lambda: all(e.event_id in verdicts_at(db_url) for e in honest), timeout=60)
    finally:
        producer.close()
        for replica in replicas:
            replica.join()
    assert all(r.error is None for r in replicas)
    assert [(f.user_id, f.reason) for f in rows_at(db_url, FlaggedRater)] == [("bot", "bot_pattern")]  # flagged once
    evidence = {q.event_id: q.evidence["bot_pattern"] for q in rows_at(db_url, Quarantine)}
    assert all(evidence[e.event_id].get("retroactive") for e in bot_first)
    # the later votes, on both partitions so on both replicas, are quarantined as they arrive
    assert not any(evidence[e.event_id].get("retroactive") for e in bot_later)
    assert not any(verdicts_at(db_url)[e.event_id] for e in honest)
