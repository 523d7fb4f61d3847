"""A durable local outbox: the gateway's half of "nothing acknowledged is lost", even when the broker forgets.

An event is acknowledged to the app (202, or the chat answer) once it is committed to a SQLite
file in the data dir (WAL, ``synchronous=FULL``), never on the broker's word alone: the embedded
broker keeps everything in memory, so its acknowledgement survives neither its own crash nor a
restart. A ``Relay`` thread then puts the outbox on the broker, oldest first (so records with one
key keep their order), through the self-healing ``EventProducer``, and marks as sent only what the
broker acknowledged.

Sent rows are kept for ``retain_s`` seconds. When the producer had to be rebuilt (the broker
failed; it may have lost its memory), every retained row is sent again, in order: the worker
stores idempotently, so a record the broker did keep is a harmless duplicate, and one it forgot
is delivered. An event is therefore lost only if a memory broker dies holding it after the worker
lagged more than ``retain_s`` behind; a durable Kafka cluster loses nothing either way.

The outbox is bounded (``max_pending`` unsent events): a full outbox refuses new events with
``OutboxFull`` (a 503 with ``Retry-After``) rather than growing without limit while the broker is
away. One gateway process owns one outbox file. Its table is created here, not by Alembic: it is
this process's private local file, not the shared store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)

from feedback import events
from feedback.db.session import sqlite_engine
from feedback.events import Event
from feedback.producer import BrokerUnavailable, EventProducer

log = logging.getLogger(__name__)

DEPTH = Gauge("flywheel_outbox_depth", "Acknowledged events in the gateway's outbox not yet on the broker.")
RELAYED = Counter("flywheel_outbox_relayed_total", "Outbox records the broker acknowledged, replays included.")
REPLAYED = Counter("flywheel_outbox_replayed_total", "Sent outbox records queued again after the broker failed.")
RELAY_FAILURES = Counter("flywheel_outbox_relay_failures_total", "Relay batches the broker did not acknowledge.")

RELAY_BATCH = 500
"""Records sent before one wait for their acknowledgements: one round trip per batch, not per event."""

_metadata = MetaData()
_outbox = Table(
    "outbox",
    _metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # the delivery order
    Column("kind", String(16), nullable=False),
    Column("key", LargeBinary, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("sent_at", Float, nullable=True, index=True),  # NULL: not acknowledged by the broker yet
    sqlite_autoincrement=True,  # a seq is never reused, so order survives deletes
)


class OutboxFull(BrokerUnavailable):
    """The outbox holds ``max_pending`` undelivered events: the new ones are refused, nothing was accepted."""


class Outbox:
    """The SQLite outbox file: ``put`` before acknowledging, then ``pending``/``mark_sent`` by the relay."""

    def __init__(self, path: Path, max_pending: int, retain_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_pending = max_pending
        self.retain_s = retain_s
        # WAL plus synchronous=FULL: a committed put survives a crash of the process and of the machine.
        self.engine: Engine = sqlite_engine(f"sqlite:///{path}", "journal_mode=WAL", "synchronous=FULL",
                                            "busy_timeout=30000")
        _metadata.create_all(self.engine)
        self._lock = threading.Lock()  # guards _pending against concurrent puts and marks
        with self.engine.connect() as conn:
            self._pending = int(conn.scalar(select(func.count()).where(_outbox.c.sent_at.is_(None))) or 0)
        DEPTH.set(self._pending)

    @property
    def depth(self) -> int:
        """Events acknowledged to apps that the broker has not acknowledged yet."""
        return self._pending

    def put(self, batch: Sequence[Event]) -> None:
        """Commit ``batch`` (all or none) durably; ``OutboxFull`` if it would exceed the bound."""
        rows = [{"kind": e.type, "key": e.key, "value": events.encode(e)} for e in batch]
        with self._lock:
            if self._pending + len(rows) > self.max_pending:
                raise OutboxFull(f"the outbox holds {self._pending} undelivered events (at most {self.max_pending})")
            with self.engine.begin() as conn:
                conn.execute(insert(_outbox), rows)
            self._pending += len(rows)
        DEPTH.set(self._pending)

    def pending(self, limit: int) -> list[Any]:
        """The oldest unsent rows (seq, kind, key, value), in delivery order."""
        query = (select(_outbox.c.seq, _outbox.c.kind, _outbox.c.key, _outbox.c.value)
                 .where(_outbox.c.sent_at.is_(None)).order_by(_outbox.c.seq).limit(limit))
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def mark_sent(self, seqs: Sequence[int]) -> None:
        """Record that the broker acknowledged these rows; they stay for ``retain_s`` in case it forgets them."""
        with self._lock, self.engine.begin() as conn:
            done = conn.execute(update(_outbox).where(_outbox.c.seq.in_(seqs), _outbox.c.sent_at.is_(None))
                                .values(sent_at=time.time())).rowcount
            self._pending -= done
        DEPTH.set(self._pending)

    def replay(self) -> int:
        """Queue every retained sent row again (the broker failed and may have lost them); returns how many."""
        with self._lock, self.engine.begin() as conn:
            again = conn.execute(update(_outbox).where(_outbox.c.sent_at.is_not(None)).values(sent_at=None)).rowcount
            self._pending += again
        DEPTH.set(self._pending)
        REPLAYED.inc(again)
        return again

    def prune(self) -> None:
        """Forget rows the broker acknowledged more than ``retain_s`` ago."""
        with self.engine.begin() as conn:
            conn.execute(delete(_outbox).where(_outbox.c.sent_at < time.time() - self.retain_s))

    def close(self) -> None:
        self.engine.dispose()


class Relay:
    """A thread that moves the outbox onto the broker, in order, and replays it after a broker failure."""

    def __init__(self, outbox: Outbox, producer: EventProducer, prune_every_s: float = 10.0) -> None:
        self.outbox = outbox
        self.producer = producer
        self.prune_every_s = prune_every_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        self._generation = producer.generation

    def start(self) -> Relay:
        self._thread.start()
        return self

    def wake(self) -> None:
        """New rows are in: deliver now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        pruned = 0.0
        while not self._stop.is_set():
            if self.producer.generation != self._generation:  # the broker failed since the last look
                self._generation = self.producer.generation
                log.warning("the producer was rebuilt; %d retained outbox records are sent again",
                            self.outbox.replay())
            if time.monotonic() - pruned > self.prune_every_s:
                self.outbox.prune()
                pruned = time.monotonic()
            if not self._deliver_batch():
                self._wake.wait(0.2 if self.outbox.depth else 1.0)
                self._wake.clear()

    def _deliver_batch(self) -> bool:
        """Send the oldest unsent rows; True if all were acknowledged (so more may be waiting)."""
        if not self.producer.available:
            return False
        rows = self.outbox.pending(RELAY_BATCH)
        if not rows:
            return False
        try:
            self.producer.send_records([(row.key, row.value) for row in rows])
        except BrokerUnavailable as exc:  # the producer rebuilds itself; these rows go again, in order
            RELAY_FAILURES.inc()
            log.warning("the broker did not take %d outbox records (%s); they wait", len(rows), exc)
            return False
        self.outbox.mark_sent([row.seq for row in rows])
        RELAYED.inc(len(rows))
        return True

    def stop(self, drain_s: float = 5.0) -> None:
        """Deliver what the broker takes within ``drain_s``, then stop; the rest waits in the file for next time."""
        deadline = time.monotonic() + drain_s
        while self.outbox.depth and self.producer.available and time.monotonic() < deadline:
            self.wake()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join()
