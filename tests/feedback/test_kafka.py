"""Producer, topic and worker against the real embedded broker (Tansu) and both databases.

Every Kafka feature the project relies on has a test here: Tansu's upstream does not test
kafka-python, so these are the contract.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from feedback import events
from feedback.db.models import Completion, Feedback, Quarantine
from feedback.db.session import make_engine, session_factory
from feedback.events import Event
from feedback.producer import BrokerUnavailable, EventProducer, ensure_topic
from feedback.store import BatchResult, store_batch
from feedback.worker import Worker
from feedback.worker_settings import WorkerSettings
from flywheel.stack.supervise import free_port
from tests.conftest import EventBuilder
from tests.feedback.filtering import filter_settings

Settings = Callable[..., WorkerSettings]
# These tests send feedback right after its answer: no reading-time limit here (test_filters_* cover it).
NO_READING_TIME = filter_settings(timing_min_ms=0, timing_ms_per_char=0)


def read_all(settings: WorkerSettings, expected: int, timeout: float = 10.0) -> list[Any]:
    """Every record of the topic, read by partition assignment (no group, so no join delay)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(settings.kafka_topic, p) for p in range(settings.kafka_partitions)])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    consumer.close()
    return records


def partition_count(settings: WorkerSettings) -> int:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        [topic] = admin.describe_topics([settings.kafka_topic])
    finally:
        admin.close()
    return len(topic["partitions"])


@pytest.fixture
def producer(settings: Settings) -> Iterator[EventProducer]:
    producer = EventProducer(settings())
    yield producer
    producer.close()


def rows(db_url: str) -> dict[str, int]:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            return {
                model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
                for model in (Completion, Feedback, Quarantine)
            }
    finally:
        engine.dispose()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class RunningWorker:
    """A Worker in a thread; remembers the exception that ended it, if any."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "worker did not stop"


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def run_worker_until(settings: WorkerSettings, condition: Callable[[], bool]) -> RunningWorker:
    running = RunningWorker(Worker(settings, NO_READING_TIME))
    try:
        wait_until(lambda: condition() or not running.thread.is_alive())
    finally:
        running.join()
    return running


def test_ensure_topic_creates_the_partitions_once(settings: Settings) -> None:
    config = settings(kafka_partitions=3)
    ensure_topic(config)
    ensure_topic(config)  # idempotent
    assert partition_count(config) == 3


def test_readiness_probe_writes_a_record(producer: EventProducer, settings: Settings) -> None:
    assert asyncio.run(producer.probe())
    consumer = KafkaConsumer(bootstrap_servers=settings().bootstrap_servers, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(producer.probe_topic, 0)])
    records = [r for batch in consumer.poll(timeout_ms=2000).values() for r in batch]
    consumer.close()
    assert [r.value for r in records] == [b"readyz"]


def test_unreachable_broker_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(BrokerUnavailable):
        EventProducer(settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"), timeout=0.5)


def test_producer_creates_the_topic_with_the_configured_partitions(settings: Settings) -> None:
    """Tansu auto-creates a topic on a metadata request; the producer must get there first."""
    config = settings(kafka_partitions=2)
    EventProducer(config).close()
    assert partition_count(config) == 2


def test_send_is_acknowledged_and_readable(producer: EventProducer, settings: Settings, build: EventBuilder) -> None:
    one, many, blocking = build.completion(1), [build.completion(1) for _ in range(5)], build.completion(1)

    async def send() -> None:
        await producer.send(one)
        await producer.send_many(many)

    asyncio.run(send())
    producer.send_sync(blocking)
    records = read_all(settings(), 7)
    assert sorted(events.decode(r.value).event_id for r in records) == sorted(
        e.event_id for e in [one, *many, blocking]
    )
    assert {r.key for r in records} == {e.key for e in [one, *many, blocking]}


def test_a_completion_and_its_feedback_share_a_partition(
    producer: EventProducer, settings: Settings, build: EventBuilder
) -> None:
    sent: list[Event] = []
    for _ in range(8):  # enough roots to spread over the 4 partitions
        completion = build.completion(1)
        a, b = build.pair(1)
        sent += [completion, build.thumbs(1, completion.response_id), a, b, build.pairwise(1, a.pair_id or "")]
    asyncio.run(producer.send_many(sent))
    records = read_all(settings(), len(sent))
    partitions: dict[bytes, set[int]] = {}
    for record in records:
        partitions.setdefault(record.key, set()).add(record.partition)
    assert len(records) == len(sent)
    assert len(partitions) == 16 and all(len(p) == 1 for p in partitions.values())
    assert len(set().union(*partitions.values())) > 1  # keys really are spread


def test_worker_stores_events_end_to_end(
    db_url: str, make_app: Callable[[str], int], settings: Settings, build: EventBuilder
) -> None:
    config = settings(database_url=db_url)
    ensure_topic(config)
    app = make_app(db_url)
    completion = build.completion(app)
    a, b = build.pair(app)
    batch: list[Event] = [
        completion, build.thumbs(app, completion.response_id),
        a, b, build.pairwise(app, a.pair_id or ""),
        build.thumbs(app, build.completion(app).response_id),  # unknown response
    ]
    invalid_before = metric("flywheel_worker_invalid_events_total")
    raw = KafkaProducer(bootstrap_servers=config.bootstrap_servers)
    raw.send(config.kafka_topic, key=completion.key, value=b"not an event").get(10)  # must not block its partition
    raw.close()
    producer = EventProducer(config)
    asyncio.run(producer.send_many(batch))
    producer.close()

    running = run_worker_until(config, lambda: rows(db_url) == {"completions": 3, "feedback": 2, "quarantine": 1})

    assert running.error is None
    assert rows(db_url) == {"completions": 3, "feedback": 2, "quarantine": 1}
    assert metric("flywheel_worker_invalid_events_total") == invalid_before + 1


def test_restarted_worker_resumes_after_its_commit(
    db_url: str, make_app: Callable[[str], int], settings: Settings, build: EventBuilder
) -> None:
    config = settings(database_url=db_url)
    app = make_app(db_url)
    producer = EventProducer(config)
    asyncio.run(producer.send_many([build.completion(app) for _ in range(20)]))
    run_worker_until(config, lambda: rows(db_url)["completions"] == 20)

    duplicates_before = metric("flywheel_worker_events_total", kind="completion", outcome="duplicate")
    asyncio.run(producer.send_many([build.completion(app) for _ in range(15)]))
    producer.close()
    running = run_worker_until(config, lambda: rows(db_url)["completions"] == 35)

    assert running.error is None
    assert rows(db_url)["completions"] == 35
    assert metric("flywheel_worker_events_total", kind="completion", outcome="duplicate") == duplicates_before


def test_crash_between_db_commit_and_offset_commit_duplicates_nothing(
    db_url: str, make_app: Callable[[str], int], settings: Settings, build: EventBuilder
) -> None:
    config = settings(database_url=db_url)
    app = make_app(db_url)
    completion = build.completion(app)
    producer = EventProducer(config)
    asyncio.run(producer.send_many([completion, build.thumbs(app, completion.response_id)]))
    producer.close()

    class Crash(Exception):
        pass

    crashing = Worker(config, NO_READING_TIME)

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise Crash("process died after the database commit")

    crashing.consumer.commit = crash
    first = RunningWorker(crashing)
    first.thread.join(30)
    assert isinstance(first.error, Crash)
    assert rows(db_url) == {"completions": 1, "feedback": 1, "quarantine": 0}

    duplicates_before = metric("flywheel_worker_events_total", kind="thumbs", outcome="duplicate")
    second = run_worker_until(
        config, lambda: metric("flywheel_worker_events_total", kind="thumbs", outcome="duplicate") > duplicates_before
    )
    assert second.error is None
    assert rows(db_url) == {"completions": 1, "feedback": 1, "quarantine": 0}


def test_failed_database_write_is_retried_not_skipped(
    db_url: str,
    make_app: Callable[[str], int],
    settings: Settings,
    build: EventBuilder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = settings(database_url=db_url)
    app = make_app(db_url)
    producer = EventProducer(config)
    asyncio.run(producer.send_many([build.completion(app) for _ in range(10)]))
    producer.close()
    calls = 0

    def flaky_store(session: Session, batch: Any, judge: Any) -> BatchResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("INSERT", {}, Exception("database went away"))
        return store_batch(session, batch, judge)

    monkeypatch.setattr("feedback.worker.store_batch", flaky_store)
    failed_before = metric("flywheel_worker_batches_total", result="failed")
    running = run_worker_until(config, lambda: rows(db_url)["completions"] == 10)

    assert running.error is None
    assert rows(db_url)["completions"] == 10
    assert metric("flywheel_worker_batches_total", result="failed") == failed_before + 1
