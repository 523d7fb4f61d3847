"""The fault suite's harness: the gateway and the worker as real ``python -m flywheel`` processes, load
that sends numbered events through the gateway, and the count of what was acknowledged against what the
database holds.

A fault is always a real one (SIGKILL of a process, a broker that loses its memory, a database the worker
cannot reach), never a patched method. Each test ends by restarting what it broke, waiting until the
worker is quiet, and recording ``Figures``; ``tests/fault/conftest.py`` prints them after the run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from feedback.apps import create_app as create_api_app
from feedback.db.models import Completion, Feedback, Quarantine
from feedback.db.session import make_engine, session_factory, transaction
from feedback.events import utcnow
from feedback.store import completion_row, insert_ignoring_conflicts
from flywheel.stack.services import flywheel_process
from flywheel.stack.supervise import ManagedProcess, Supervisor, wait_for
from serving.settings import ServingSettings
from tests.conftest import EventBuilder

SEND_TIMEOUT_S = 2.0  # FLYWHEEL_KAFKA_SEND_TIMEOUT_S of the gateway: how long it may wait on a dead broker


@dataclass
class Figures:
    """Acknowledged events against stored rows, for one test on one database."""

    test: str
    database: str
    acknowledged: int
    stored: int  # acknowledged events found in the database
    lost: int  # acknowledged, never stored
    duplicated: int  # extra rows of an event already stored once
    unacknowledged: int = 0  # stored though the client saw no 2xx (the connection died after the commit)
    note: str = ""


FIGURES: list[Figures] = []
"""Every test's figures, in run order: printed in the terminal summary (``tests/fault/conftest.py``)."""


def sigkill(proc: ManagedProcess) -> None:
    """SIGKILL the process group (a crash: no handler, no clean-up) and reap it."""
    assert proc.proc is not None
    os.killpg(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait()


@dataclass
class Stack:
    """Gateway and worker processes on a broker and a database, with one app and answers it was served."""

    settings: ServingSettings
    db_url: str  # the test's own way into the database (the processes may go through a proxy)
    gateway: ManagedProcess
    worker: ManagedProcess
    key: str
    app_id: int
    responses: list[str]
    pairs: list[str]

    @property
    def seeded(self) -> set[str]:
        """The answers stored before the load began (not events the load sent)."""
        return set(self.responses) | {f"resp_{pair[5:]}_{side}" for pair in self.pairs for side in "ab"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def stored(self, tables: tuple[type[Any], ...] = (Feedback, Quarantine)) -> Counter[str]:
        """Rows per id of this app over ``tables`` (an event stored once has exactly one row in all of them):
        votes by event id, answers by the response id the app was given."""
        engine = make_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return Counter(key for table in tables for (key,) in conn.execute(
                    sa.select(table.response_id if table is Completion else table.event_id)
                    .where(table.app_id == self.app_id)))
        finally:
            engine.dispose()

    def outbox_undelivered(self) -> int:
        """Rows of the gateway's outbox file that the broker has not acknowledged (read while the gateway is down)."""
        with sqlite3.connect(self.settings.resolved_outbox_path) as conn:
            return int(conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])

    def settle(self, load: Load, test: str, database: str, note: str = "",
               tables: tuple[type[Any], ...] = (Feedback, Quarantine), timeout: float = 180.0) -> Figures:
        """Wait until every acknowledged event is stored (or ``timeout``) and the worker is quiet; count."""
        def caught_up() -> bool:
            return load.acknowledged <= set(self.stored(tables))

        with contextlib.suppress(TimeoutError):  # what is missing then is counted as lost
            wait_for(caught_up, timeout, "every acknowledged event stored", interval=1.0)
        time.sleep(3)  # redeliveries still in flight would show as duplicates
        rows = self.stored(tables)
        acked = load.acknowledged
        refused = f"refused: {dict(load.refused)}" if load.refused else ""
        figures = Figures(test, database, acknowledged=len(acked), stored=len(acked & set(rows)),
                          lost=len(acked - set(rows)), duplicated=sum(n - 1 for n in rows.values()),
                          unacknowledged=len(set(rows) - acked - self.seeded),
                          note="; ".join(filter(None, [note, refused])))
        FIGURES.append(figures)
        return figures


def start_stack(settings: ServingSettings, db_url: str, worker_env: dict[str, str] | None = None) -> Stack:
    """Create an app and a few old answers in the database, then start the worker and the gateway as processes.

    The answers are an hour old, so votes on them are judged like real ones (not ``too_fast``).
    """
    sessions = session_factory(make_engine(db_url))
    build = EventBuilder()
    with transaction(sessions) as session:
        app, key = create_api_app(session, "fault-app")
        old = utcnow() - timedelta(hours=1)
        singles = [build.completion(app.id) for _ in range(10)]
        pairs = [side for _ in range(5) for side in build.pair(app.id)]
        rows = [completion_row(e) | {"created_at": old} for e in singles + pairs]
        insert_ignoring_conflicts(session, Completion, rows)
        app_id = app.id
    env = {"FLYWHEEL_KAFKA_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S), "FLYWHEEL_REGISTERED_MODEL": settings.registered_model}
    worker = flywheel_process("worker", settings, ready=lambda: True, args=["--metrics-port", "0"], env=env | {
        "FLYWHEEL_WORKER_GROUP_ID": f"fault-{settings.kafka_topic}",
        "FLYWHEEL_WORKER_MAX_BATCH": "100",  # many batches, so a kill lands in the middle of one
        "FLYWHEEL_WORKER_POLL_TIMEOUT_MS": "200",
        "FLYWHEEL_WORKER_SESSION_TIMEOUT_MS": "3000",
        "FLYWHEEL_WORKER_HEARTBEAT_INTERVAL_MS": "500",
        "FLYWHEEL_WORKER_RETRY_BACKOFF_S": "0.5",
    } | (worker_env or {}))
    gateway_url = f"http://127.0.0.1:{settings.port}"
    gateway = flywheel_process("serve", settings, env=env,
                               ready=lambda: httpx.get(f"{gateway_url}/healthz", timeout=2).is_success)
    worker.start().wait_ready()
    gateway.start().wait_ready()
    return Stack(settings, db_url, gateway, worker, key, app_id,
                 [e.response_id for e in singles], sorted({e.pair_id for e in pairs if e.pair_id}))


@contextmanager
def running_stack(settings: ServingSettings, db_url: str, worker_env: dict[str, str] | None = None) -> Iterator[Stack]:
    stack = start_stack(settings, db_url, worker_env)
    try:
        yield stack
    finally:
        stack.gateway.stop()
        stack.worker.stop()


@dataclass
class Load:
    """``senders`` threads sending numbered events to the gateway as fast as it answers, until stopped.

    Remembers every event id that got a 2xx (``acknowledged``) and counts the rest by status or error.
    ``acked`` is set after each acknowledgement (a test may clear it and wait for the next one).
    """

    stack: Stack
    prefix: str
    senders: int = 4
    pause: float = 0.05  # between one sender's requests: about 100 events/s in all, what the worker keeps up with
    numbers: Iterator[int] = field(default_factory=itertools.count)
    refused: Counter[str] = field(default_factory=Counter)
    acked: threading.Event = field(default_factory=threading.Event)
    _acknowledged: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def acknowledged(self) -> set[str]:
        with self._lock:
            return set(self._acknowledged)

    def send(self, client: httpx.Client) -> list[str]:
        """One request; the event ids it got acknowledged. Votes: thumbs, pairwise, and every fifth a batch of five."""
        n = next(self.numbers)
        votes = [self.vote(n * 5 + i) for i in range(5 if n % 5 == 4 else 1)]
        path = "/v1/feedback/batch" if len(votes) > 1 else "/v1/feedback"
        return self.accepted(client.post(path, json=votes if len(votes) > 1 else votes[0]),
                             [v["event_id"] for v in votes])

    def accepted(self, response: httpx.Response, ids: list[str]) -> list[str]:
        """``ids`` if ``response`` acknowledged them; else none, and the refusal counted by status."""
        if response.is_success:
            return ids
        self.refused[str(response.status_code)] += 1
        return []

    def vote(self, n: int) -> dict[str, str]:
        common = {"user_id": f"user-{n % 40}", "event_id": f"{self.prefix}-{n}"}
        if n % 2:
            return common | {"type": "pairwise", "pair_id": self.stack.pairs[n % len(self.stack.pairs)],
                             "choice": "ab"[n % 3 % 2]}
        return common | {"type": "thumbs", "response_id": self.stack.responses[n % len(self.stack.responses)],
                         "rating": "up" if n % 3 else "down"}

    def _run(self) -> None:
        with httpx.Client(base_url=self.stack.url, timeout=10,
                          headers={"Authorization": f"Bearer {self.stack.key}"}) as client:
            while not self._stop.is_set():
                try:
                    ids = self.send(client)
                except httpx.HTTPError as exc:
                    self.refused[type(exc).__name__] += 1
                    ids = []
                if ids:
                    with self._lock:
                        self._acknowledged.update(ids)
                    self.acked.set()
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
                         for i in range(self.senders)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def wait_acknowledged(self, more: int, timeout: float = 60.0) -> None:
        """Wait until ``more`` further events are acknowledged."""
        target = len(self.acknowledged) + more
        wait_for(lambda: len(self.acknowledged) >= target, timeout, f"{more} more acknowledged events", interval=0.1)


@contextmanager
def supervised(*procs: ManagedProcess) -> Iterator[Supervisor]:
    """Restart any of ``procs`` that exits, as ``flywheel up`` does (``Supervisor``, back-off from 1 s)."""
    supervisor = Supervisor(list(procs), on_restart=lambda _proc, why: None)
    stop = threading.Event()
    watcher = threading.Thread(target=supervisor.run, args=(stop, 0.2), name="supervisor", daemon=True)
    watcher.start()
    try:
        yield supervisor
    finally:
        stop.set()
        watcher.join(60)


def mid_batch(stack: Stack, load: Load, look: float = 0.3) -> bool:
    """The worker is storing right now, with acknowledged events still to store: a kill lands mid-stream."""
    before = sum(stack.stored().values())
    time.sleep(look)
    after = sum(stack.stored().values())
    return after > before and len(load.acknowledged) > after


def wait_mid_batch(stack: Stack, load: Load, timeout: float = 60.0) -> None:
    wait_for(lambda: mid_batch(stack, load), timeout, "the worker storing a backlog", interval=0.05)


def database_name(db_url: str) -> str:
    return "SQLite" if db_url.startswith("sqlite") else "PostgreSQL"


def sqlite_path(db_url: str) -> Path:
    return Path(db_url.split("///", 1)[1])
