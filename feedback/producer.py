"""Putting events on the broker: the gateway's half of "nothing accepted is lost".

An event counts as accepted only once the broker has acknowledged it to all in-sync
replicas (``acks="all"``), and the producer is idempotent so its own retries never write a
record twice. The async API resolves an asyncio future from kafka-python's sender thread,
so the gateway's event loop never waits on the network.

The producer heals itself. An idempotent kafka-python producer that lost its broker (a
restart, which also forgets the producer id) stays in a fatal state for good, so after any
failed send the producer is rebuilt in a background thread, with back-off, until a new one
connects (and the topic exists again: a memory broker forgets it too). While it is being
rebuilt, sends fail at once with ``BrokerUnavailable`` instead of waiting: the gateway
answers 503 with ``Retry-After`` in milliseconds, not after a timeout per request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import kafka.errors as kafka_errors
from kafka import KafkaAdminClient, KafkaProducer
from prometheus_client import Counter

from feedback import events
from feedback.events import Event
from feedback.settings import CommonSettings

log = logging.getLogger(__name__)

REBUILDS = Counter("flywheel_producer_rebuilds", "Producers rebuilt after a failed send, by outcome (started, done).",
                   ["outcome"])

PROBE_TTL_S = 5.0
"""A readiness answer is reused this long, so a probe hit every second writes at most one record per TTL."""
_MAX_BACKOFF_S = 10.0


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge an event (unreachable, timed out or refused it).

    Callers must treat the event as not accepted: the gateway answers 503 and the client
    retries with the same ``event_id``, which the worker deduplicates.
    """


class EventProducer:
    """An idempotent, ``acks="all"`` kafka-python producer for the events topic, rebuilt after failures.

    The constructor ensures the topic (brokers that auto-create topics on a metadata request,
    Tansu included, would otherwise pick the partition count) and fetches its metadata, so
    that ``send`` (which blocks on a metadata fetch the first time it sees a topic) does not
    stall an event loop later. A broker down at start-up is an error here (``BrokerUnavailable``);
    one lost later is reconnected to in the background.
    """

    def __init__(self, settings: CommonSettings, timeout: float | None = None, linger_ms: int = 5) -> None:
        self.settings = settings
        self.topic = settings.kafka_topic
        self.probe_topic = f"{settings.kafka_topic}.probe"
        self.timeout = timeout if timeout is not None else settings.kafka_send_timeout_s
        self.linger_ms = linger_ms
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._broken: str | None = None  # why the producer is being rebuilt; sends fail at once meanwhile
        self._rebuilder: threading.Thread | None = None
        self._probed: tuple[float, bool] = (-PROBE_TTL_S, False)
        self.generation = 0  # rebuilds done: a change tells the outbox relay the broker may have forgotten records
        self._producer = self._connect()

    def _connect(self) -> KafkaProducer:
        """A new producer on a broker that has both topics; ``BrokerUnavailable`` if it cannot be had."""
        ensure_topic(self.settings, self.timeout)
        ensure_topic(self.settings, self.timeout, self.probe_topic, partitions=1)
        try:
            producer = KafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers,
                enable_idempotence=True,
                acks="all",
                linger_ms=self.linger_ms,
                max_block_ms=int(self.timeout * 1000),
                bootstrap_timeout_ms=int(self.timeout * 1000),
                # A record nobody acknowledges fails after the timeout (not kafka-python's 120 s), so the
                # producer it sits in can be closed when it is replaced.
                delivery_timeout_ms=int(self.timeout * 1000),
                request_timeout_ms=int(self.timeout * 1000) - self.linger_ms - 1,  # kafka-python: delivery > both
                client_id="flywheel-producer",
            )
            producer.partitions_for(self.topic)
            producer.partitions_for(self.probe_topic)
        except kafka_errors.KafkaError as exc:
            raise BrokerUnavailable(
                f"cannot reach the broker at {self.settings.kafka_bootstrap_servers}: {exc}"
            ) from exc
        return producer

    @property
    def available(self) -> bool:
        """False while the producer is being rebuilt after a failure."""
        return self._broken is None

    def check_available(self) -> None:
        """Raise ``BrokerUnavailable`` at once if the producer is being rebuilt, rather than wait out a timeout."""
        broken = self._broken
        if broken is not None:
            raise BrokerUnavailable(f"the broker is unreachable ({broken}); reconnecting in the background")

    def _failed(self, reason: str) -> None:
        """Mark the producer broken and rebuild it in the background; one rebuild at a time."""
        with self._lock:
            if self._broken is not None or self._closed.is_set():
                return
            self._broken = reason
            self._rebuilder = threading.Thread(target=self._rebuild, name="producer-rebuild", daemon=True)
        REBUILDS.labels("started").inc()
        log.warning("the broker failed a send (%s); rebuilding the producer, sends answer 503 until then", reason)
        self._rebuilder.start()

    def _rebuild(self) -> None:
        # Records still buffered in the old producer fail within the delivery timeout: their senders answered
        # 503 already (their wait is as long) and retry with the same event ids.
        try:
            self._producer.close(timeout=self.timeout + 1)
        except kafka_errors.KafkaError as exc:
            log.warning("the failed producer did not close cleanly (%s)", exc)
        backoff = 0.2
        while not self._closed.is_set():
            try:
                producer = self._connect()
            except BrokerUnavailable as exc:
                log.info("producer not rebuilt yet (%s); next try in %.1fs", exc, backoff)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            with self._lock:
                self._producer, self._broken = producer, None
                self.generation += 1
            self._probed = (-PROBE_TTL_S, False)
            REBUILDS.labels("done").inc()
            log.info("producer rebuilt: the broker at %s takes events again", self.settings.kafka_bootstrap_servers)
            return

    def _send(self, event: Event, topic: str | None = None) -> Any:
        """Hand one record to the producer's buffer; returns kafka-python's future."""
        self.check_available()
        try:
            return self._producer.send(topic or self.topic, key=event.key, value=events.encode(event))
        except kafka_errors.KafkaError as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            raise BrokerUnavailable(f"could not enqueue event {event.event_id}: {exc}") from exc

    def _ack(self, kafka_future: Any) -> asyncio.Future[None]:
        """An asyncio future that the sender thread resolves when the broker acknowledges."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def _set(exc: BaseException | None) -> None:
            if done.done():  # cancelled by a timeout while the broker was still answering
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        kafka_future.add_callback(lambda _metadata: loop.call_soon_threadsafe(_set, None))
        kafka_future.add_errback(lambda exc: loop.call_soon_threadsafe(_set, exc))
        return done

    async def _await_acks(self, acks: list[asyncio.Future[None]]) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*acks), self.timeout)
        except TimeoutError as exc:
            self._failed(f"no acknowledgement within {self.timeout}s")
            raise BrokerUnavailable(f"no acknowledgement from the broker within {self.timeout}s") from exc
        except kafka_errors.KafkaError as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            raise BrokerUnavailable(f"the broker refused an event: {exc}") from exc

    async def send(self, event: Event) -> None:
        """Send one event and return once the broker has acknowledged it."""
        await self._await_acks([self._ack(self._send(event))])

    async def send_many(self, batch: Iterable[Event]) -> None:
        """Send every event before waiting, so one batch costs one round trip, not one per event."""
        await self._await_acks([self._ack(self._send(event)) for event in batch])

    def send_sync(self, event: Event, timeout: float = 10.0) -> None:
        """Blocking variant for scripts, the CLI and threads without an event loop."""
        try:
            self._send(event).get(timeout=timeout)
        except kafka_errors.KafkaError as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            raise BrokerUnavailable(f"event {event.event_id} not acknowledged: {exc}") from exc

    def send_records(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Send raw ``(key, value)`` records in order and block until the broker acknowledged them all.

        For the outbox relay (a thread): any failure fails the whole call, and the caller sends the
        same records again, in the same order, once the producer is rebuilt.
        """
        self.check_available()
        try:
            futures = [self._producer.send(self.topic, key=key, value=value) for key, value in records]
            for future in futures:
                future.get(timeout=self.timeout)
        except kafka_errors.KafkaError as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            raise BrokerUnavailable(f"{len(records)} records not acknowledged: {exc}") from exc

    async def probe(self) -> bool:
        """Whether a write goes through now: a record to the probe topic, acknowledged like any event (``/readyz``).

        The answer is reused for ``PROBE_TTL_S``, unless a send failed since; a failed probe starts a rebuild
        like a failed send.
        """
        if not self.available:
            return False
        at, ok = self._probed
        if time.monotonic() - at < PROBE_TTL_S:
            return ok
        try:
            future = self._producer.send(self.probe_topic, key=b"probe", value=b"readyz")
            await self._await_acks([self._ack(future)])
            ok = True
        except (BrokerUnavailable, kafka_errors.KafkaError) as exc:
            self._failed(f"probe: {exc}")
            ok = False
        self._probed = (time.monotonic(), ok)
        return ok

    def close(self, timeout: float = 10.0) -> None:
        """Stop any rebuild, flush what is buffered, then release the connections."""
        self._closed.set()
        if self._rebuilder is not None:
            self._rebuilder.join(self.timeout * 2 + _MAX_BACKOFF_S)
        self._producer.close(timeout=timeout)


def _admin_client(settings: CommonSettings, timeout: float, client_id: str) -> KafkaAdminClient:
    """An admin client that gives up after ``timeout`` instead of kafka-python's 30 s bootstrap default."""
    return KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=int(timeout * 1000),
        bootstrap_timeout_ms=int(timeout * 1000),
        client_id=client_id,
    )


def ensure_topic(settings: CommonSettings, timeout: float = 10.0, topic: str | None = None,
                 partitions: int | None = None) -> None:
    """Create ``topic`` (default: the events topic, with ``kafka_partitions`` partitions) unless it exists.

    Safe to call from every process at start-up; a concurrent creator wins and the others
    see ``TopicAlreadyExistsError``, which is success here. An existing topic keeps its
    partition count (changing it would move keys between partitions).
    """
    topic = topic or settings.kafka_topic
    partitions = partitions or settings.kafka_partitions
    try:
        admin = _admin_client(settings, timeout, "flywheel-admin")
    except kafka_errors.KafkaError as exc:
        raise BrokerUnavailable(f"cannot connect to the broker at {settings.kafka_bootstrap_servers}") from exc
    try:
        if topic in admin.list_topics():
            return
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": -1}}, wait_for_metadata=True)
        log.info("created topic %s with %d partitions", topic, partitions)
    except kafka_errors.TopicAlreadyExistsError:
        pass
    except kafka_errors.KafkaError as exc:
        raise BrokerUnavailable(f"could not create topic {topic!r}: {exc}") from exc
    finally:
        admin.close()
