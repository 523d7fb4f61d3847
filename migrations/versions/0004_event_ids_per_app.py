"""Event ids scoped per app: feedback and quarantine are unique on (app_id, event_id), not event_id.

An event id is the app's idempotency key. Unique across all apps, app B's use of an id made
app A's vote with the same id a silent no-op. ``admin_actions`` gains the app whose event a
quarantine action touched, so "released" and "purged" are per app too (backfilled from the
``app_id`` the actions already wrote into their detail).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("feedback", "quarantine")
# SQLite keeps 0001's UNIQUE(event_id) unnamed; batch mode finds it under this convention's name.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _event_id_unique(table: str) -> str:
    """The name of ``table``'s UNIQUE(event_id): PostgreSQL's own, or the convention's on SQLite."""
    for constraint in sa.inspect(op.get_bind()).get_unique_constraints(table):
        if constraint["column_names"] == ["event_id"] and constraint["name"]:
            return str(constraint["name"])
    return f"uq_{table}_event_id"


def upgrade() -> None:
    for table in TABLES:
        name = _event_id_unique(table)
        with op.batch_alter_table(table, naming_convention=NAMING) as batch:
            batch.drop_constraint(name, type_="unique")
            batch.create_unique_constraint(f"uq_{table}_app_event", ["app_id", "event_id"])
            batch.create_index(f"ix_{table}_event_id", ["event_id"])
    with op.batch_alter_table("admin_actions") as batch:
        batch.add_column(sa.Column("app_id", sa.Integer, nullable=True))
        batch.create_index("ix_admin_actions_app_id", ["app_id"])
    actions = sa.table("admin_actions", sa.column("id", sa.Integer), sa.column("action", sa.String),
                       sa.column("detail", sa.JSON), sa.column("app_id", sa.Integer))
    bind = op.get_bind()
    rows = bind.execute(sa.select(actions.c.id, actions.c.detail).where(actions.c.action.like("quarantine.%")))
    for action_id, detail in list(rows):
        if isinstance(detail, dict) and isinstance(detail.get("app_id"), int):
            bind.execute(actions.update().where(actions.c.id == action_id).values(app_id=detail["app_id"]))


def downgrade() -> None:
    with op.batch_alter_table("admin_actions") as batch:
        batch.drop_index("ix_admin_actions_app_id")
        batch.drop_column("app_id")
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_event_id")
            batch.drop_constraint(f"uq_{table}_app_event", type_="unique")
            batch.create_unique_constraint(f"uq_{table}_event_id", ["event_id"])
