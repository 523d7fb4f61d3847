"""Who gave each accepted vote: ``feedback.source`` (human, or a machine such as an AI judge).

Machine feedback (``flywheel label``) is stored beside the votes of end users and must stay
countable apart from them: the trainer's snapshot counts each source, and the live numbers a
canary is judged by count human votes only. Rows stored before this revision are all human.
Quarantined events keep their source inside ``payload``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="human"))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("source")
