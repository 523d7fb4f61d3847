"""The canary's share of traffic and a decision's evidence, kept on the alias move that set them.

A canary is the ``canary`` alias plus the percent of end users it serves. MLflow aliases hold no
value beside the version, so the percent lives on the audited move that set it (``percent``),
which also makes "which version served whom at time T" answerable from ``alias_moves`` alone.
``evidence`` holds what an automatic decision saw (its test statistics), so a rollback nobody
typed can still be explained. The index serves "the last move of this alias before T".

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alias_moves") as batch:
        batch.add_column(sa.Column("percent", sa.Float, nullable=True))
        batch.add_column(sa.Column("evidence", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))
        batch.create_index("ix_alias_moves_model_alias_at", ["model_name", "alias", "at"])


def downgrade() -> None:
    with op.batch_alter_table("alias_moves") as batch:
        batch.drop_index("ix_alias_moves_model_alias_at")
        batch.drop_column("evidence")
        batch.drop_column("percent")
