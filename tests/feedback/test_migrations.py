"""Migrations under a lock: processes started together on an empty database migrate once, none crashes.

Reproduces ``flywheel serve`` and ``flywheel worker`` started side by side on an empty PostgreSQL:
both ran ``upgrade`` at once, both created ``alembic_version`` and one died on a duplicate table.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import sqlalchemy as sa

from feedback.db.session import make_engine, upgrade

RACERS = 4

UPGRADE = "import sys; from feedback.db.session import upgrade; upgrade(sys.argv[1])"


def test_processes_upgrading_an_empty_database_at_once_all_succeed(empty_db_url: str) -> None:
    racers = [subprocess.Popen([sys.executable, "-c", UPGRADE, empty_db_url], stderr=subprocess.PIPE, text=True)
              for _ in range(RACERS)]
    failures = [err for proc in racers if (err := proc.communicate(timeout=120)[1]) and proc.returncode != 0]
    assert failures == []
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
        assert len(versions) == 1
        assert "feedback" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_migrated_sqlite_store_is_in_wal_mode_before_any_connection_asks(tmp_path: Path) -> None:
    """The journal mode is the file's, set by the migration: connections never convert it.

    Connections that each set WAL raced to convert a freshly migrated file, and one conversion
    failed "database is locked" without waiting (the concurrent promotion test in CI).
    """
    path = tmp_path / "flywheel.db"
    upgrade(f"sqlite:///{path}")
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
