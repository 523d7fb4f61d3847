"""``flywheel db``: schema migrations."""

from __future__ import annotations

import typer

from feedback.db.session import upgrade as migrate
from feedback.settings import CommonSettings
from flywheel.cli.common import console, setup_logging

app = typer.Typer(help="The feedback store.", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("head", help="Alembic revision to migrate to.")) -> None:
    """Create or migrate the tables (SQLite in the data dir, or FLYWHEEL_DATABASE_URL)."""
    setup_logging()
    migrate(CommonSettings().resolved_database_url, revision)
    console.print(f"database at [bold]{revision}[/]")
