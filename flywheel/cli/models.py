"""``flywheel models``: which version serves users, and every move of that choice."""

from __future__ import annotations

import typer
from rich.table import Table

from feedback.db.session import make_engine, session_factory, upgrade
from feedback.settings import CommonSettings
from flywheel.cli.common import console, default_actor, fail
from registry.promotion import Promotion, RegistryError

app = typer.Typer(help="Model versions and the champion alias.", no_args_is_help=True)

ACTOR = typer.Option(None, help="Who is acting, for the audit trail. Default: cli:<login>.")
REASON = typer.Option(None, help="Why, for the audit trail.")


def _registry() -> Promotion:
    settings = CommonSettings()
    upgrade(settings.resolved_database_url)
    factory = session_factory(make_engine(settings.resolved_database_url))
    return Promotion(settings.resolved_mlflow_uri, settings.registered_model, factory)


@app.command("list")
def list_() -> None:
    """Every registered version with its aliases and held-out metrics."""
    table = Table("version", "aliases", "parent", "held-out acc", "champion acc", "created", "run")
    for info in _registry().list_versions():
        table.add_row(
            info.version, ", ".join(info.aliases), info.tags.get("parent_version", ""),
            _metric(info.metrics, "heldout_accuracy"), _metric(info.metrics, "champion_heldout_accuracy"),
            f"{info.created_at:%Y-%m-%d %H:%M}", (info.run_id or "")[:8],
        )
    console.print(table)


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.3f}" if name in metrics else ""


@app.command()
def promote(version: str = typer.Argument(..., help="The version to make champion."),
            actor: str | None = ACTOR, reason: str | None = REASON) -> None:
    """Make VERSION the champion; the gateway switches to it within seconds, without a restart."""
    try:
        _registry().promote(version, actor or default_actor(), reason)
    except RegistryError as exc:
        fail(str(exc))
    console.print(f"version [bold]{version}[/] is champion")


@app.command()
def rollback(actor: str | None = ACTOR, reason: str | None = REASON) -> None:
    """Return the champion to the version it held before the current one."""
    try:
        version = _registry().rollback(actor or default_actor(), reason)
    except RegistryError as exc:
        fail(str(exc))
    console.print(f"rolled back: version [bold]{version}[/] is champion")


@app.command()
def history(limit: int = typer.Option(20, help="How many moves, newest first.")) -> None:
    """Every alias move: when, what, from which version to which, who and why."""
    table = Table("when", "alias", "action", "from", "to", "actor", "reason")
    for move in _registry().history(limit):
        table.add_row(f"{move.at:%Y-%m-%d %H:%M:%S}", move.alias, move.action, move.from_version or "",
                      move.to_version, move.actor, move.reason or "")
    console.print(table)
