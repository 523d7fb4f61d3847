"""The feedback worker: Kafka -> validate -> filter -> store, committing offsets last.

Each poll is stored in one database transaction and only then are the offsets committed.
A crash between the two re-delivers the batch, and the idempotent store turns the
re-delivery into no-ops; a crash before the database commit loses nothing because the
offsets never moved. Records that cannot be decoded are counted and skipped, so one bad
record never blocks its partition.

The filter pipeline's state is rebuilt from the database before the first batch, and again
after a failed batch (whose events it may have seen but the database never kept), so a
restarted worker judges the next event exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import kafka.errors as kafka_errors
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.exc import SQLAlchemyError

from feedback import events
from feedback.db.session import make_engine, session_factory, transaction
from feedback.events import Event
from feedback.filters import FilterSettings, Pipeline
from feedback.filters.reward_scores import StoredRewardScores
from feedback.producer import ensure_topic
from feedback.settings import CommonSettings
from feedback.store import BatchResult, store_batch
from feedback.worker_settings import WorkerSettings

log = logging.getLogger(__name__)

EVENTS = Counter(
    "flywheel_worker_events", "Decoded events by kind and outcome (stored, accepted, quarantined, "
    "duplicate, invalid).", ["kind", "outcome"]
)
INVALID_RECORDS = Counter(
    "flywheel_worker_invalid_events", "Records that could not be decoded as an event; skipped, stored nowhere."
)
BATCHES = Counter("flywheel_worker_batches", "Polled batches by result (committed, failed).", ["result"])
BATCH_SECONDS = Histogram("flywheel_worker_batch_seconds", "Time to store and commit one batch.")
LAG = Gauge("flywheel_worker_lag", "Records behind the partition's high watermark.", ["topic", "partition"])

Records = dict[TopicPartition, list[Any]]


class Worker:
    """One member of the worker consumer group, writing to the configured database.

    The consumer is created (and the topic ensured) in the constructor, so a broker that
    is down fails fast at start-up rather than inside ``run``. Any room's settings will do
    (``flywheel up`` runs the worker beside the gateway): the shared fields are kept and the
    ``FLYWHEEL_WORKER_*`` ones come from the environment, and the ``FLYWHEEL_FILTER_*`` ones
    unless ``filters`` is given. The contract suite (Great Expectations) is built here too,
    so its few seconds of import are paid at start-up, not by the first batch.
    """

    def __init__(self, settings: CommonSettings | None = None, filters: FilterSettings | None = None) -> None:
        if not isinstance(settings, WorkerSettings):
            settings = WorkerSettings(**(settings.model_dump() if settings is not None else {}))
        self.settings: WorkerSettings = settings
        self.filter_settings = filters or FilterSettings()
        self.pipeline: Pipeline | None = None
        Pipeline(self.filter_settings).suite.build()  # cached per process: the real pipeline reuses it
        self.engine = make_engine(settings.resolved_database_url)
        self.sessions = session_factory(self.engine)
        self.reward_scores = StoredRewardScores(self.sessions)  # the trainer's, once a round has run
        ensure_topic(settings)
        self.consumer = KafkaConsumer(
            settings.kafka_topic,
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.worker_group_id,
            client_id="flywheel-worker",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.worker_max_batch,
            session_timeout_ms=settings.worker_session_timeout_ms,
            heartbeat_interval_ms=settings.worker_heartbeat_interval_ms,
        )

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, then leave the group and close.

        A failed database write rewinds the batch and retries after a back-off, so a database
        outage pauses the worker instead of skipping records. Anything else propagates: the
        process supervisor restarts the worker and the group re-delivers from the last commit.
        """
        log.info("worker %s consuming %s", self.settings.worker_group_id, self.settings.kafka_topic)
        try:
            while not stop.is_set():
                try:
                    self.step()
                except SQLAlchemyError:
                    log.exception("storing a batch failed; retrying in %.1fs", self.settings.worker_retry_backoff_s)
                    stop.wait(self.settings.worker_retry_backoff_s)
        finally:
            self.close()

    def step(self) -> BatchResult | None:
        """Poll once and store what came; None when the poll returned nothing (deferred searches run then)."""
        records: Records = self.consumer.poll(
            timeout_ms=self.settings.worker_poll_timeout_ms, max_records=self.settings.worker_max_batch
        )
        if not records:
            self._catch_up()
            return None
        started = time.perf_counter()
        decoded = [event for batch in records.values() for event in map(self._decode, batch) if event is not None]
        try:
            with transaction(self.sessions) as session:
                if self.pipeline is None:
                    self.pipeline = Pipeline.rebuild(session, self.filter_settings, self.reward_scores)
                result = store_batch(session, decoded, self.pipeline)
        except SQLAlchemyError:
            BATCHES.labels("failed").inc()
            self.pipeline = None  # it saw events the database did not keep: rebuild from what it did
            self._rewind(records)
            raise
        self._commit(records)
        for (kind, outcome), n in result.outcomes.items():
            EVENTS.labels(kind, outcome).inc(n)
        BATCHES.labels("committed").inc()
        BATCH_SECONDS.observe(time.perf_counter() - started)
        self._record_lag(records)
        log.debug("batch of %d records: %s", sum(map(len, records.values())), dict(result.outcomes))
        return result

    def _catch_up(self) -> None:
        """The stream is quiet: run the history searches the pipeline deferred (``search_interval_s``)."""
        if self.pipeline is None:
            return
        try:
            with transaction(self.sessions) as session:
                self.pipeline.catch_up(session)
        except SQLAlchemyError:
            self.pipeline = None  # its flags were never stored: rebuild from what was
            raise

    def _decode(self, record: Any) -> Event | None:
        try:
            return events.decode(record.value)
        except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError; None values a TypeError
            INVALID_RECORDS.inc()
            log.warning("skipping undecodable record %s[%d]@%d", record.topic, record.partition, record.offset)
            return None

    def _commit(self, records: Records) -> None:
        """Commit past the last stored record of each partition.

        A failed commit (lost the partition to a rebalance, coordinator unreachable) is not
        fatal: the next commit supersedes it, or the partition's next owner re-reads from the
        previous commit and the idempotent store absorbs the repeats.
        """
        offsets = {tp: OffsetAndMetadata(batch[-1].offset + 1, "", -1) for tp, batch in records.items()}
        try:
            self.consumer.commit(offsets)
        except kafka_errors.KafkaError as exc:
            log.warning("offset commit failed (%s); the batch will be re-delivered as no-ops", exc)

    def _rewind(self, records: Records) -> None:
        """Move each partition back to the batch's first record so the retry re-reads it."""
        for tp, batch in records.items():
            # A partition no longer assigned is skipped: its new owner starts from the last commit.
            with contextlib.suppress(kafka_errors.IllegalStateError):
                self.consumer.seek(tp, batch[0].offset)

    def _record_lag(self, records: Records) -> None:
        for tp, batch in records.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                LAG.labels(tp.topic, str(tp.partition)).set(highwater - batch[-1].offset - 1)

    def close(self) -> None:
        """Leave the group without committing (commits only follow database commits)."""
        self.consumer.close(autocommit=False)
        self.engine.dispose()
