"""Engines, sessions and migrations for the store (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent

MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"flywheel.migrations").digest()[:8], "big", signed=True)
"""The PostgreSQL advisory lock (one bigint per database) every ``upgrade`` holds while it migrates."""


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Connection-local settings only (FKs are off by default in SQLite); the file's journal mode
        # is set once, by ``upgrade``.
        return sqlite_engine(url, "foreign_keys=ON", "busy_timeout=30000")
    return create_engine(url, pool_pre_ping=True)


def sqlite_engine(url: str, *pragmas: str) -> Engine:
    """A SQLite engine that sets ``PRAGMA <p>`` for each of ``pragmas`` on every new connection."""
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``: the only way tables are created.

    Run under a lock, so processes started together (``flywheel serve`` and ``flywheel worker`` on
    an empty database) migrate one after the other: the first creates the tables, the others find
    them at ``revision`` and do nothing. Without it both created ``alembic_version`` and one crashed.
    A SQLite file is put in WAL mode here too (``write_ahead_log``).
    """
    with migration_lock(url):
        command.upgrade(alembic_config(url), revision)
        write_ahead_log(url)


def write_ahead_log(url: str) -> None:
    """Put a store kept in a SQLite file in WAL mode; any other URL is left alone.

    In WAL mode readers and the one writer do not wait for each other (the gateway reads keys while
    the worker writes). The mode is a property of the file, kept once set, so it is set once: by
    the migration, under its lock. Set on every new connection instead, the first connections of
    several threads to a freshly migrated file each tried to convert it, and a conversion racing
    another connection's write failed with "database is locked" without waiting (the concurrent
    promotion test, in a clean-clone CI run on a slow machine).
    """
    if not url.startswith("sqlite:///") or url.removeprefix("sqlite:///") in ("", ":memory:"):
        return
    engine = make_engine(url)  # creates the parent directory
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Hold the database's migration lock: PostgreSQL's advisory lock, or a file lock beside a SQLite file.

    The advisory lock belongs to its own connection's session and is released when that connection
    ends, however the process dies. Alembic's DDL on SQLite is not transactional, so SQLite's own
    locking would not keep two migrations apart; the ``<db>.migrate.lock`` file's ``flock`` does and
    is likewise released by the kernel on exit. An in-memory SQLite database has nobody to race.
    """
    if url.startswith("sqlite"):
        engine = make_engine(url)  # creates the parent directory
        engine.dispose()
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                yield
                return
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()
