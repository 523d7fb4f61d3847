"""Migration 0006 adds ``feedback.source``: votes stored before it are human, and it goes both ways."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from feedback.db.session import alembic_config, make_engine, upgrade

VOTE = ("INSERT INTO feedback (event_id, type, app_id, user_id, pair_id, choice, weight, created_at, stored_at{}) "
        "VALUES ('{}', 'pairwise', 1, 'u', 'pair_x', 'a', 1.0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP{})")


def test_0006_keeps_old_votes_as_human_and_goes_both_ways(empty_db_url: str) -> None:
    upgrade(empty_db_url, "0005")
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO apps (name, key_hash, key_prefix, is_admin, created_at) "
                                 "VALUES ('app', 'h', 'k', false, CURRENT_TIMESTAMP)"))
            conn.execute(sa.text(VOTE.format("", "evt-old", "")))
        upgrade(empty_db_url)
        with engine.begin() as conn:
            conn.execute(sa.text(VOTE.format(", source", "ai-new", ", 'ai'")))
            rows = conn.execute(sa.text("SELECT event_id, source FROM feedback ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("evt-old", "human"), ("ai-new", "ai")]
        command.downgrade(alembic_config(empty_db_url), "0005")
        engine.dispose()
        assert "source" not in {c["name"] for c in sa.inspect(engine).get_columns("feedback")}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar_one() == 2
    finally:
        engine.dispose()
