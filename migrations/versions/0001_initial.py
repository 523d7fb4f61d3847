"""Initial schema: apps, completions, feedback, quarantine, alias moves.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_table(
        "completions",
        sa.Column("response_id", sa.String(48), primary_key=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("pair_id", sa.String(48), nullable=True, index=True),
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), nullable=False, index=True),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("model_version", sa.String(32), nullable=False, index=True),
        sa.Column("messages", JSON, nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False, index=True),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("params", JSON, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("created_at", TS, nullable=False, index=True),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), nullable=False, index=True),
        sa.Column("user_id", sa.String(256), nullable=False, index=True),
        sa.Column("response_id", sa.String(48), sa.ForeignKey("completions.response_id"), index=True),
        sa.Column("pair_id", sa.String(48), nullable=True, index=True),
        sa.Column("rating", sa.String(8), nullable=True),
        sa.Column("choice", sa.String(16), nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("correction", sa.Text, nullable=True),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("created_at", TS, nullable=False, index=True),
        sa.Column("stored_at", TS, nullable=False),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("app_id", sa.Integer, nullable=False, index=True),
        sa.Column("user_id", sa.String(256), nullable=False, index=True),
        sa.Column("reasons", JSON, nullable=False),
        sa.Column("evidence", JSON, nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("stored_at", TS, nullable=False),
    )
    op.create_table(
        "alias_moves",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(256), nullable=False, index=True),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_version", sa.String(32), nullable=True),
        sa.Column("to_version", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in ("alias_moves", "quarantine", "feedback", "completions", "apps"):
        op.drop_table(table)
