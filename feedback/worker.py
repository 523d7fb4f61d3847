"""The feedback worker: Kafka -> validate -> filter -> store, committing offsets last.

Each poll is stored in one database transaction and only then are the offsets committed.
A crash between the two re-delivers the batch, and the idempotent store turns the
re-delivery into no-ops; a crash before the database commit loses nothing because the
offsets never moved. Records that cannot be decoded are counted and skipped, so one bad
record never blocks its partition.

A batch the database refuses (a NUL character on PostgreSQL, a number out of range) is
stored in halves until each refused event stands alone; that event goes to quarantine as
``unstorable`` and the rest are stored, so one poison pill never stops ingestion. Only an
unreachable database makes the worker wait and re-read the same batch, because then nothing
could be stored anyway; ``flywheel_worker_batch_attempts`` and the log say so.

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
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError, StatementError

from feedback import events
from feedback.db.models import Quarantine
from feedback.db.session import make_engine, session_factory, transaction
from feedback.events import Event
from feedback.filters import FilterSettings, Pipeline
from feedback.filters.replicas import SearchLease
from feedback.filters.reward_scores import StoredRewardScores
from feedback.producer import ensure_topic
from feedback.settings import CommonSettings
from feedback.store import UNSTORABLE, BatchResult, insert_ignoring_conflicts, store_batch, unstorable_row
from feedback.worker_settings import WorkerSettings

log = logging.getLogger(__name__)

EVENTS = Counter(
    "flywheel_worker_events", "Decoded events by kind and outcome (stored, accepted, quarantined, "
    "duplicate, invalid).", ["kind", "outcome"]
)
INVALID_RECORDS = Counter(
    "flywheel_worker_invalid_events", "Records that could not be decoded as an event; skipped, stored nowhere."
)
BATCHES = Counter("flywheel_worker_batches", "Polled batches by result (committed, failed, split: the database "
                  "refused it and it was stored in halves).", ["result"])
ATTEMPTS = Gauge("flywheel_worker_batch_attempts", "Failed attempts in a row at storing the current batch (0: "
                 "none); it grows only while the database is unreachable.")
UNSTORABLE_EVENTS = Counter("flywheel_worker_unstorable_events", "Events the database refused, by kind and where "
                            "they went (quarantined, dropped: not even the quarantine row could be stored).",
                            ["kind", "outcome"])
BATCH_SECONDS = Histogram("flywheel_worker_batch_seconds", "Time to store and commit one batch.")
LAG = Gauge("flywheel_worker_lag", "Records behind the partition's high watermark.", ["topic", "partition"])

Records = dict[TopicPartition, list[Any]]


def refused(exc: BaseException) -> bool:
    """Whether the database (or its driver) refused the data, as opposed to being unreachable.

    Refused: a value it cannot hold (``DataError``: NUL in text, a number out of range, a string
    too long), a broken constraint, or a value the driver cannot even encode (a lone surrogate,
    an integer beyond 64 bits). Retrying those fails forever; an unreachable or locked database
    (``OperationalError``) and anything else are not refused: retrying or a restart is right.
    """
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, StatementError) and exc.orig is not None:
        return refused(exc.orig)
    return isinstance(exc, ValueError | ArithmeticError)


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
        self.lease = SearchLease(self.engine)  # replicas share the history; the lease holder searches it
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

        A database that cannot be reached rewinds the batch and retries after a back-off, so an
        outage pauses the worker instead of skipping records (a refused batch never gets here:
        ``step`` splits it). Anything else propagates: the process supervisor restarts the
        worker and the group re-delivers from the last commit.
        """
        log.info("worker %s consuming %s", self.settings.worker_group_id, self.settings.kafka_topic)
        failures = 0
        try:
            while not stop.is_set():
                try:
                    self.step()
                    failures = 0
                except SQLAlchemyError as exc:
                    failures += 1
                    log.exception("the database is unavailable (%s); the batch waits in Kafka (attempt %d), "
                                  "retrying in %.1fs", type(exc).__name__, failures,
                                  self.settings.worker_retry_backoff_s)
                    stop.wait(self.settings.worker_retry_backoff_s)
                ATTEMPTS.set(failures)
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
            result = self._store(decoded)
        except Exception:
            BATCHES.labels("failed").inc()
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

    def _store(self, batch: list[Event]) -> BatchResult:
        """Store ``batch`` in one transaction; if the database refuses it, store it in halves (see ``_store_apart``).

        The pipeline is rebuilt apart from the batch, so that an error there (the stored history, not this
        batch) propagates instead of being blamed on the batch's events.
        """
        if self.pipeline is None:
            with self.sessions() as session:
                self.pipeline = Pipeline.rebuild(session, self.filter_settings, self.reward_scores, self.lease)
        try:
            with transaction(self.sessions) as session:
                return store_batch(session, batch, self.pipeline)
        except Exception as exc:
            self.pipeline = None  # it saw events the database did not keep: rebuild from what it did
            if not refused(exc):
                raise
            if len(batch) == 1:
                return self._set_aside(batch[0], exc)
            BATCHES.labels("split").inc()
            log.warning("the database refused a batch of %d events (%s); storing it in halves", len(batch),
                        type(exc).__name__)
            return self._store_apart(batch)

    def _store_apart(self, batch: list[Event]) -> BatchResult:
        """Each half in its own transaction, in partition order; a refused half is split again until the events the
        database refuses stand alone. One bad event among n costs about 2·log2(n) transactions, once."""
        result = BatchResult()
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            result.outcomes.update(self._store(half).outcomes)
        return result

    def _set_aside(self, event: Event, error: BaseException) -> BatchResult:
        """Quarantine one event the database refused, as ``unstorable``; drop it (logged, counted) only if even its
        cleaned quarantine row is refused, so it can never block the events behind it."""
        result = BatchResult()
        try:
            with transaction(self.sessions) as session:
                insert_ignoring_conflicts(session, Quarantine, [unstorable_row(event, error)])
        except Exception as exc:
            if not refused(exc):
                raise
            UNSTORABLE_EVENTS.labels(event.type, "dropped").inc()
            result.outcomes[(event.type, "dropped")] += 1
            log.error("the database refused %s event %s of app %s (%s) and its quarantine row (%s); skipped, it is "
                      "stored nowhere", event.type, event.event_id, event.app_id, error, exc)
            return result
        UNSTORABLE_EVENTS.labels(event.type, "quarantined").inc()
        result.outcomes[(event.type, UNSTORABLE)] += 1
        log.error("the database refused %s event %s of app %s (%s); quarantined as %s, the rest of its batch is "
                  "stored", event.type, event.event_id, event.app_id, type(error).__name__, UNSTORABLE)
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
        self.lease.close()
        self.engine.dispose()
