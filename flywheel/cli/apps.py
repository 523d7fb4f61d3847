"""``flywheel apps``: API keys for apps (chat and feedback) and ops (admin)."""

from __future__ import annotations

import typer
from rich.table import Table

from feedback.apps import AppExists, create_app, list_apps
from feedback.db.session import transaction
from flywheel.cli.common import console, fail, store_sessions

app = typer.Typer(help="API keys of apps and ops.", no_args_is_help=True)


@app.command()
def create(
    name: str = typer.Argument(..., help="A name for the app, unique."),
    admin: bool = typer.Option(False, "--admin", help="An ops key: may promote, roll back, review quarantine."),
) -> None:
    """Create an app and print its API key. The key is shown once; only its hash is stored."""
    try:
        with transaction(store_sessions()) as session:
            record, key = create_app(session, name, admin=admin)
            app_id = record.id
    except AppExists as exc:
        fail(str(exc))
    console.print(f"app [bold]{name}[/] (id {app_id}{', admin' if admin else ''}) created. Its API key:")
    print(key)
    console.print("[dim]Store it now: it cannot be shown again.[/]")


@app.command("list")
def list_() -> None:
    """List apps (never their keys)."""
    with store_sessions()() as session:
        table = Table("id", "name", "admin", "key starts", "created", "revoked")
        for record in list_apps(session):
            table.add_row(str(record.id), record.name, "yes" if record.is_admin else "", record.key_prefix + "…",
                          f"{record.created_at:%Y-%m-%d %H:%M}", "yes" if record.revoked_at else "")
    console.print(table)
