"""Fixtures of the feedback tests: a session factory and an app on each test's database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.session import make_engine, session_factory


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def app_id(db_url: str, make_app: Callable[[str], int]) -> int:
    return make_app(db_url)
