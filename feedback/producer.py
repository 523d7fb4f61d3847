"""Putting events on the broker: the gateway's half of "nothing accepted is lost".

An event counts as accepted only once the broker has acknowledged it to all in-sync
replicas (``acks="all"``), and the producer is idempotent so its own retries never write a
record twice. The async API resolves an asyncio future from kafka-python's sender thread,
so the gateway's event loop never waits on the network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import kafka.errors as kafka_errors
from kafka import KafkaAdminClient, KafkaProducer

from feedback import events
from feedback.events import Event
from feedback.settings import CommonSettings

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge an event (unreachable, timed out or refused it).

    Callers must treat the event as not accepted: the gateway answers 503 and the client
    retries with the same ``event_id``, which the worker deduplicates.
    """


class EventProducer:
    """An idempotent, ``acks="all"`` kafka-python producer for the events topic.

    The constructor ensures the topic (brokers that auto-create topics on a metadata request,
    Tansu included, would otherwise pick the partition count) and fetches its metadata, so
    that ``send`` (which blocks on a metadata fetch the first time it sees a topic) does not
    stall an event loop later.
    """

    def __init__(self, settings: CommonSettings, timeout: float = 10.0, linger_ms: int = 5) -> None:
        self.topic = settings.kafka_topic
        self.timeout = timeout
        ensure_topic(settings, timeout)
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=settings.bootstrap_servers,
                enable_idempotence=True,
                acks="all",
                linger_ms=linger_ms,
                max_block_ms=int(timeout * 1000),
                bootstrap_timeout_ms=int(timeout * 1000),
                client_id="flywheel-producer",
            )
            self._producer.partitions_for(self.topic)
        except kafka_errors.KafkaError as exc:
            raise BrokerUnavailable(f"cannot reach the broker at {settings.kafka_bootstrap_servers}: {exc}") from exc

    def _send(self, event: Event) -> Any:
        """Hand one record to the producer's buffer; returns kafka-python's future."""
        try:
            return self._producer.send(self.topic, key=event.key, value=events.encode(event))
        except kafka_errors.KafkaError as exc:
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
            raise BrokerUnavailable(f"no acknowledgement from the broker within {self.timeout}s") from exc
        except kafka_errors.KafkaError as exc:
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
            raise BrokerUnavailable(f"event {event.event_id} not acknowledged: {exc}") from exc

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is buffered, then release the connections."""
        self._producer.close(timeout=timeout)


def _admin_client(settings: CommonSettings, timeout: float, client_id: str) -> KafkaAdminClient:
    """An admin client that gives up after ``timeout`` instead of kafka-python's 30 s bootstrap default."""
    return KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=int(timeout * 1000),
        bootstrap_timeout_ms=int(timeout * 1000),
        client_id=client_id,
    )


def ensure_topic(settings: CommonSettings, timeout: float = 10.0) -> None:
    """Create the events topic with ``kafka_partitions`` partitions unless it exists.

    Safe to call from every process at start-up; a concurrent creator wins and the others
    see ``TopicAlreadyExistsError``, which is success here. An existing topic keeps its
    partition count (changing it would move keys between partitions).
    """
    try:
        admin = _admin_client(settings, timeout, "flywheel-admin")
    except kafka_errors.KafkaError as exc:
        raise BrokerUnavailable(f"cannot connect to the broker at {settings.kafka_bootstrap_servers}") from exc
    try:
        if settings.kafka_topic in admin.list_topics():
            return
        admin.create_topics(
            {settings.kafka_topic: {"num_partitions": settings.kafka_partitions, "replication_factor": -1}},
            wait_for_metadata=True,
        )
        log.info("created topic %s with %d partitions", settings.kafka_topic, settings.kafka_partitions)
    except kafka_errors.TopicAlreadyExistsError:
        pass
    except kafka_errors.KafkaError as exc:
        raise BrokerUnavailable(f"could not create topic {settings.kafka_topic!r}: {exc}") from exc
    finally:
        admin.close()


_PROBE_TTL = 5.0
_probe_lock = threading.Lock()
_probe_cache: dict[str, tuple[float, bool]] = {}


def broker_reachable(settings: CommonSettings, timeout: float = 2.0) -> bool:
    """Whether the broker answers a metadata request; for ``/readyz``.

    The answer is cached for a few seconds per bootstrap list, so a readiness probe hit
    every second costs at most one short admin round trip per ``_PROBE_TTL``.
    """
    servers = settings.kafka_bootstrap_servers
    with _probe_lock:
        cached = _probe_cache.get(servers)
        if cached is not None and time.monotonic() - cached[0] < _PROBE_TTL:
            return cached[1]
        try:
            admin = _admin_client(settings, timeout, "flywheel-probe")
            try:
                admin.describe_cluster()
                reachable = True
            finally:
                admin.close()
        except kafka_errors.KafkaError:
            reachable = False
        _probe_cache[servers] = (time.monotonic(), reachable)
        return reachable
