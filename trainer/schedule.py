"""Running the trainer unattended: one run at a time, periodic cycles, and skipping cycles with no news.

The lock must never outlive the run that took it, or a crashed trainer would stop training
for good. Both kinds are released by the operating system or the database when the holder
dies, with no stale-lock cleanup to get wrong:
- PostgreSQL store: a session-level advisory lock (``pg_try_advisory_lock``), held by one
  dedicated connection; the server drops it when that connection closes or dies.
- SQLite store: ``fcntl.flock`` on ``<data dir>/trainer.lock``; the kernel drops it when the
  file is closed or the process dies (even by SIGKILL).
The key is derived from the registered model's name, so two models in one store train independently.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Feedback
from feedback.db.session import make_engine
from feedback.events import HUMAN
from registry.model_versions import CHAMPION
from trainer.config import ConfigError, TrainerSettings
from trainer.pairs import EventKey
from trainer.registry import Registry

log = logging.getLogger(__name__)

LOCK_FILE = "trainer.lock"
SNAPSHOT_ARTIFACT = "snapshot.json"
SNAPSHOT_HASH_TAG = "snapshot_hash"
SNAPSHOT_WINDOW_END_PARAM = "snapshot.window_end"  # run parameter: the newest vote the run trained on
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


class LockBusy(RuntimeError):
    """Another training run holds the lock."""


def parse_duration(value: str) -> float:
    """Seconds in a duration such as ``30m``, ``6h``, ``1d`` or ``1h30m``."""
    cleaned = value.strip().lower()
    parts = _DURATION.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise ConfigError(f"--every takes a duration like 30m, 6h, 1d or 1h30m (got {value!r})")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"--every must be longer than zero (got {value!r})")
    return seconds


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key (PostgreSQL's bigint) stable for one registered model."""
    return int.from_bytes(hashlib.sha256(f"flywheel-trainer:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def training_lock(settings: TrainerSettings) -> Iterator[None]:
    """Hold the trainer lock of ``settings.registered_model`` for the block; raise LockBusy if taken."""
    url = settings.resolved_database_url
    if url.startswith("postgresql"):
        engine = make_engine(url)
        key = _lock_key(settings.registered_model)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                    raise LockBusy(f"another training run of {settings.registered_model!r} holds the database lock")
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise LockBusy(f"another training run holds {path} ({handle.read().strip() or 'pid unknown'})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def last_snapshot_event_ids(registry: Registry) -> set[EventKey] | None:
    """Event keys of the newest trained version's snapshot; None before the first trained version.

    Snapshots frozen before events were keyed per app hold bare ids, which match no key: their
    events count as new once, so at worst one extra round trains.
    """
    versions = [
        v
        for v in registry.client.search_model_versions(f"name='{registry.name}'")
        if v.run_id and SNAPSHOT_HASH_TAG in (v.tags or {})
    ]
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(registry.client.download_artifacts(str(newest.run_id), SNAPSHOT_ARTIFACT, tmp))
        return {EventKey(*key) for key in json.loads(path.read_text())["event_ids"] if isinstance(key, list)}


def champion_learnt_until(registry: Registry) -> datetime | None:
    """The newest vote in the champion's own training snapshot; None for the base model (or no champion)."""
    champion = registry.alias_version(CHAMPION)
    if champion is None or not champion.run_id:
        return None
    window_end = registry.client.get_run(champion.run_id).data.params.get(SNAPSHOT_WINDOW_END_PARAM)
    return datetime.fromisoformat(window_end) if window_end and window_end != "None" else None


def new_feedback_count(factory: sessionmaker[Session], registry: Registry) -> int:
    """Accepted, usable end users' events that no registered version's latest snapshot holds.

    Machine labels (``flywheel label``, ``flywheel constitution``) do not count: they restate
    answers users already saw, made when ops ran a command, so the schedule waits for users to say
    something new; ops who want a round on fresh labels run ``flywheel train``.
    """
    with factory() as session:
        usable = select(Feedback.app_id, Feedback.event_id).where(Feedback.weight > 0, Feedback.source == HUMAN)
        current = {EventKey(app_id, event_id) for app_id, event_id in session.execute(usable)}
    seen = last_snapshot_event_ids(registry)
    return len(current - seen) if seen is not None else len(current)


def run_every(
    interval_seconds: float,
    cycle: Callable[[], None],
    stop: threading.Event | None = None,
) -> None:
    """Call ``cycle`` now and then every ``interval_seconds`` (start to start) until ``stop`` is set.

    A cycle that raises is logged and the schedule goes on: the crashed run registered nothing,
    its lock died with it, and the next cycle sees the same feedback. A ConfigError ends the
    schedule, because every later cycle would fail the same way.
    """
    stop = stop or threading.Event()
    while not stop.is_set():
        started = time.monotonic()
        try:
            cycle()
        except ConfigError:
            raise
        except Exception:
            log.exception("training cycle failed; the next cycle runs on schedule")
        stop.wait(max(0.0, interval_seconds - (time.monotonic() - started)))
