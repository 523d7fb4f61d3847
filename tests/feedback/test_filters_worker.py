"""The filters inside the real worker and broker: a worker restarted mid-stream gives the same verdicts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from feedback.db.session import make_engine, session_factory, upgrade
from feedback.events import Event, utcnow
from feedback.producer import EventProducer
from feedback.worker import Worker
from feedback.worker_settings import WorkerSettings
from tests.conftest import EventBuilder
from tests.feedback.filtering import after, campaign_traffic, filter_settings, verdicts
from tests.feedback.test_kafka import RunningWorker, wait_until

FILTERS = filter_settings(bot_min_votes=9, velocity_user_max=8)


def stream(build: EventBuilder, app_id: int) -> list[Event]:
    """Honest votes, a bot (flagged only after its ninth vote, after the restart), too-fast votes, and
    votes repeating a voter's target on both sides of the restart."""
    events: list[Event] = []
    start = utcnow() - timedelta(hours=1)
    for i in range(12):
        answer = build.completion(app_id, created_at=start + timedelta(minutes=i), answer="Paris. " * (i + 1))
        events.append(answer)
        events.append(build.thumbs(app_id, answer.response_id, user_id=f"h{i % 3}", rating="up" if i % 2 else "down",
                                   **after(answer, 20)))
        events.append(build.thumbs(app_id, answer.response_id, user_id="bot", **after(answer, 25)))
        if i % 4 == 0:
            events.append(build.thumbs(app_id, answer.response_id, user_id="h0", rating="up", **after(answer, 30)))
            events.append(build.thumbs(app_id, answer.response_id, user_id="rush", **after(answer, 0.2)))
    first = events[0]
    assert first.type == "completion"
    events.append(build.thumbs(app_id, first.response_id, user_id="h0", rating="up", **after(first, 50 * 60)))
    return events


def run(config: WorkerSettings, url: str, produce: list[Event], expected: int) -> None:
    producer = EventProducer(config)
    asyncio.run(producer.send_many(produce))
    producer.close()
    running = RunningWorker(Worker(config, FILTERS))
    try:
        wait_until(lambda: len(verdicts_at(url)) >= expected or not running.thread.is_alive())
    finally:
        running.join()
    assert running.error is None


def verdicts_at(url: str) -> dict[str, list[str]]:
    engine = make_engine(url)
    try:
        return verdicts(session_factory(engine))
    finally:
        engine.dispose()


def test_restart_mid_stream_gives_the_same_verdicts(
    db_url: str, tmp_path: Path, make_app: Callable[..., int], settings: Callable[..., WorkerSettings],
    build: EventBuilder,
) -> None:
    other_url = f"sqlite:///{tmp_path / 'restarted.db'}"
    upgrade(other_url)
    app_id = make_app(db_url, "app")
    assert make_app(other_url, "app") == app_id
    events = stream(build, app_id)
    votes = sum(1 for e in events if e.type != "completion")
    common = {"kafka_partitions": 1, "worker_max_batch": 7}

    run(settings(database_url=db_url, kafka_topic=f"{settings().kafka_topic}.a", **common), db_url, events, votes)
    restarted = settings(database_url=other_url, kafka_topic=f"{settings().kafka_topic}.b", **common)
    half = len(events) // 2
    run(restarted, other_url, events[:half], sum(1 for e in events[:half] if e.type != "completion"))
    run(restarted, other_url, events[half:], votes)

    uninterrupted, after_restart = verdicts_at(db_url), verdicts_at(other_url)
    assert after_restart == uninterrupted
    reasons = {r for rs in uninterrupted.values() for r in rs}
    assert {"bot_pattern", "duplicate_vote", "too_fast"} <= reasons
    assert sum(1 for rs in uninterrupted.values() if not rs) >= 12


def test_deferred_search_runs_when_the_stream_goes_quiet(
    db_url: str, make_app: Callable[..., int], settings: Callable[..., WorkerSettings], build: EventBuilder,
) -> None:
    """The campaign arrives after the first search, with the next one an hour away: only the worker's call
    on an empty poll can flag it, and does, moving its accepted votes to quarantine."""
    app_id = make_app(db_url, "app")
    completions, honest, campaign = campaign_traffic(build, app_id, "Visit https://deals.example/now with MegaCorp")
    config = settings(database_url=db_url)
    producer = EventProducer(config)
    asyncio.run(producer.send_many(completions + honest))
    running = RunningWorker(Worker(config, filter_settings(bot_min_votes=1000, search_interval_s=3600)))
    try:
        wait_until(lambda: len(verdicts_at(db_url)) >= len(honest) or not running.thread.is_alive())
        asyncio.run(producer.send_many(campaign))
        wait_until(lambda: all(verdicts_at(db_url).get(e.event_id) == ["campaign"] for e in campaign)
                   or not running.thread.is_alive())
    finally:
        producer.close()
        running.join()
    assert running.error is None
    assert not any(verdicts_at(db_url)[e.event_id] for e in honest)
