"""Filtering layer: admin audit, batch alerts, flagged raters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "admin_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("target", sa.String(256), nullable=False, index=True),
        sa.Column("detail", JSON, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_table(
        "batch_alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("check", sa.String(128), nullable=False, index=True),
        sa.Column("detail", JSON, nullable=False),
        sa.Column("batch", JSON, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_table(
        "flagged_raters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("app_id", sa.Integer, nullable=False, index=True),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("evidence", JSON, nullable=False),
        sa.Column("flagged_at", TS, nullable=False),
        sa.UniqueConstraint("app_id", "user_id", "reason"),
    )


def downgrade() -> None:
    for table in ("flagged_raters", "batch_alerts", "admin_actions"):
        op.drop_table(table)
