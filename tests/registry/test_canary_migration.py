"""Migration 0005 adds the canary's percent and a decision's evidence to ``alias_moves``, keeping old rows."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from feedback.db.session import alembic_config, make_engine, upgrade


def test_0005_keeps_old_moves_and_goes_both_ways(empty_db_url: str) -> None:
    upgrade(empty_db_url, "0004")
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO alias_moves (model_name, alias, action, to_version, actor, at) "
                                 "VALUES ('m', 'champion', 'bootstrap', '1', 'system', CURRENT_TIMESTAMP)"))
        upgrade(empty_db_url)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO alias_moves (model_name, alias, action, to_version, actor, at, percent, "
                                 "evidence) VALUES ('m', 'canary', 'canary', '2', 'ops', CURRENT_TIMESTAMP, 12.5, "
                                 "'{\"votes\": 3}')"))
            rows = conn.execute(sa.text("SELECT alias, percent FROM alias_moves ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("champion", None), ("canary", 12.5)]
        assert "ix_alias_moves_model_alias_at" in {i["name"] for i in sa.inspect(engine).get_indexes("alias_moves")}
        command.downgrade(alembic_config(empty_db_url), "0004")
        engine.dispose()
        columns = {c["name"] for c in sa.inspect(engine).get_columns("alias_moves")}
        assert "percent" not in columns and "evidence" not in columns
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM alias_moves")).scalar_one() == 2
    finally:
        engine.dispose()
