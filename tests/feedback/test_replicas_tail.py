"""``Tail``, how a worker replica reads the rows the others stored: every row once, and only the new ones fetched.

Ids appear out of order (PostgreSQL hands them out at insert, transactions commit in any
order), some never (a rolled-back transaction's), and rows already read may be deleted (votes
moved to quarantine). The rows are inserted here with explicit ids to play every such order.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import FlaggedRater
from feedback.db.session import transaction
from feedback.filters.replicas import Tail

COLUMNS = (FlaggedRater.user_id,)


class Counting:
    """A session whose ``execute`` remembers how many rows each query returned, before the tail filters them."""

    def __init__(self, session: Session) -> None:
        self.session, self.fetched = session, 0

    def execute(self, statement: Any) -> list[Any]:
        rows = list(self.session.execute(statement))
        self.fetched += len(rows)
        return rows


def insert(sessions: sessionmaker[Session], app_id: int, ids: list[int]) -> None:
    with transaction(sessions) as session:
        session.add_all(FlaggedRater(id=i, app_id=app_id, user_id=f"r{i}", reason="bot_pattern", evidence={})
                        for i in ids)


def read(sessions: sessionmaker[Session], tail: Tail) -> tuple[set[int], int]:
    """The ids the tail returns, and how many rows its query fetched."""
    with sessions() as session:
        counting = Counting(session)
        rows = tail.read(counting, COLUMNS)  # type: ignore[arg-type]
    assert all(user == f"r{row_id}" for row_id, user in rows)
    return {row_id for row_id, _ in rows}, counting.fetched


@pytest.mark.parametrize("seed", range(3))
def test_every_row_is_read_once_whatever_the_order_of_ids(
    sessions: sessionmaker[Session], app_id: int, seed: int,
) -> None:
    rng = random.Random(seed)
    ids = list(range(1, 301))
    never = set(rng.sample(ids, 15))  # rolled back: these ids never appear
    arriving = [i for i in ids if i not in never]
    rng.shuffle(arriving)  # committed in any order, but mostly near their turn
    arriving.sort(key=lambda i: i + rng.randint(0, 40))
    tail = Tail(FlaggedRater.id, wait_s=1e9)
    read_so_far: set[int] = set()
    while arriving:
        size = rng.randint(1, 25)
        batch, arriving = arriving[:size], arriving[size:]
        insert(sessions, app_id, batch)
        if rng.random() < 0.3 and read_so_far:  # rows already read are deleted: gaps that stay open
            gone = rng.sample(sorted(read_so_far), min(5, len(read_so_far)))
            with transaction(sessions) as session:
                session.execute(delete(FlaggedRater).where(FlaggedRater.id.in_(gone)))
        got, fetched = read(sessions, tail)
        assert got == set(batch)  # exactly the rows committed since the last read
        assert fetched == len(batch)  # and nothing already read was fetched again
        read_so_far |= got
    assert read_so_far == set(ids) - never


def test_a_missing_id_is_given_up_after_wait_s(sessions: sessionmaker[Session], app_id: int) -> None:
    tail = Tail(FlaggedRater.id, wait_s=0)
    insert(sessions, app_id, [1, 3])
    assert read(sessions, tail)[0] == {1, 3}
    assert read(sessions, tail) == (set(), 0)  # 2 given up (wait 0)
    insert(sessions, app_id, [2, 4])
    assert read(sessions, tail)[0] == {4}  # a row that comes after it was given up is not read, as before


def test_many_missing_ids_are_asked_for_as_one_range(sessions: sessionmaker[Session], app_id: int) -> None:
    tail = Tail(FlaggedRater.id, wait_s=1e9, max_listed=3)
    insert(sessions, app_id, [1, 7])
    assert read(sessions, tail)[0] == {1, 7}  # 2..6 missing: more than max_listed
    insert(sessions, app_id, [4, 8])
    assert read(sessions, tail) == ({4, 8}, 3)  # the range above 1: 4, 7 (read before, dropped) and 8
