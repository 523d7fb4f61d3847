"""Worker replicas in one consumer group: one history, one searcher.

Kafka splits the partitions among the replicas, and events are keyed by response, so each
replica sees part of every rater's votes. Two things make their verdicts those of one worker:

- **The database is the shared history.** Before every batch (and on every empty poll) a
  replica reads the rows the others stored since it last looked (``Tail``: feedback and
  quarantine by id, flags by id) into its filter state: their votes count in its rate windows
  and histories, their quarantines and releases move votes out of or into its accepted set,
  and their flags quarantine the rater's next votes here too. So a rater flagged anywhere is
  quarantined everywhere from the next batch on.
- **One replica searches.** The history filters that condemn raters (bots, campaigns,
  consensus) and the reliability weights they write run only in the replica holding the
  search lease: a PostgreSQL advisory lock held by a session of its own, or an exclusive
  ``flock`` on a file beside the SQLite database. The lease is held until the process ends,
  so the searcher changes only when it dies (its session or file closes), and the next
  replica takes it at its next batch. The others keep their reliability estimates current
  from the same shared history (it decides per-vote weights and ``unreliable`` verdicts)
  but write nothing of it.

Rejected alternatives: partitioning by user would put a rater's votes on one replica but
separate votes from the answers they rate (keyed by response, so a completion precedes its
feedback) and duplicates from their originals, and campaigns and consensus compare raters
anyway; searches in every replica would cost each the whole history-wide work and race to
write the same flags and weights.

Ids of rows committed by concurrent transactions can appear out of order (PostgreSQL
sequences hand them out at insert time): a ``Tail`` reads every id above the lowest one it
has not seen, and gives up on a missing id after ``wait_s`` (a rolled-back transaction's id
never appears).
"""

from __future__ import annotations

import fcntl
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy import Connection, Engine, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from feedback.db.models import FlaggedRater
from feedback.filters.base import Rater

LOCK_KEY = 0x466C7977  # "Flyw": the advisory lock of the history-wide searches


@dataclass
class Tail:
    """The rows of a table with an integer id that this process has not read yet.

    A read asks only for ids above the highest one read and for the ids missing below it (up to
    ``max_listed`` of them; beyond that, for every id above the lowest missing one). A gap that
    stays open, a row deleted after it was read (votes moved to quarantine) or a rolled-back
    transaction's id, would otherwise make every read for ``wait_s`` fetch all rows since the gap
    again: on the worker benchmark, after the first bots were flagged, each batch re-read every
    vote stored since.
    """

    id_column: InstrumentedAttribute[int]
    wait_s: float = 60.0
    max_listed: int = 1000
    _below: int = 0  # every id up to this one was read or given up on
    _top: int = 0  # the highest id read
    _seen: set[int] = field(default_factory=set)  # ids above _below that were read
    _missing: dict[int, float] = field(default_factory=dict)  # ids between _below and _top not read yet: noticed

    def read(self, session: Session, columns: tuple[Any, ...]) -> list[Any]:
        """The rows (``columns``, the id first) with ids not read before."""
        if len(self._missing) > self.max_listed:
            unread = self.id_column > self._below
        else:
            unread = or_(self.id_column > self._top, self.id_column.in_(sorted(self._missing)))
        rows = [r for r in session.execute(select(self.id_column, *columns).where(unread).order_by(self.id_column))
                if r[0] not in self._seen]
        self._seen.update(r[0] for r in rows)
        now = time.monotonic()
        highest = max((r[0] for r in rows), default=self._top)
        for missing in range(self._top + 1, highest):
            if missing not in self._seen:
                self._missing.setdefault(missing, now)
        self._top = max(self._top, highest)
        for r in rows:
            self._missing.pop(r[0], None)
        while self._below + 1 in self._seen or now - self._missing.get(self._below + 1, now) > self.wait_s:
            self._below += 1
            self._seen.discard(self._below)
            self._missing.pop(self._below, None)
        return rows


class SearchLease:
    """Whether this process runs the history-wide searches: it holds the lease once it got it, until it ends."""

    def __init__(self, engine: Engine, retry_s: float = 5.0) -> None:
        self._engine = engine
        self._retry_s = retry_s  # how often a replica without the lease tries to take it
        self._tried = -math.inf
        self._connection: Connection | None = None
        self._file: IO[bytes] | None = None

    def held(self) -> bool:
        if self._connection is None and self._file is None and time.monotonic() - self._tried >= self._retry_s:
            self._tried = time.monotonic()
            self._take()
        return self._connection is not None or self._file is not None

    def _take(self) -> None:
        if self._engine.dialect.name == "postgresql":
            connection = self._engine.connect()
            if connection.execute(select(func.pg_try_advisory_lock(LOCK_KEY))).scalar():
                connection.commit()  # the lock is the session's; the connection stays open, idle
                self._connection = connection
            else:
                connection.close()
            return
        database = self._engine.url.database
        path = f"{database}.search-lock" if database and database != ":memory:" else None
        if path is None:  # an in-memory database has one process
            self._file = open(os.devnull, "rb")  # noqa: SIM115 (held until close)
            return
        handle = open(path, "ab")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return
        self._file = handle

    def close(self) -> None:
        """Give the lease up (the process ends or stops consuming)."""
        if self._connection is not None:
            self._connection.close()
        if self._file is not None:
            self._file.close()
        self._connection = self._file = None


def read_flags(session: Session, tail: Tail) -> list[tuple[Rater, str, dict[str, Any]]]:
    """Flags stored since the last read, by any replica."""
    rows = tail.read(session, (FlaggedRater.app_id, FlaggedRater.user_id, FlaggedRater.reason,
                               FlaggedRater.evidence))
    return [((app_id, user_id), reason, evidence) for _, app_id, user_id, reason, evidence in rows]


LoadAnswers = Callable[[Session, set[str], set[str]], None]
