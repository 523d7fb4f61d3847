"""What every command shares: logging, the exit on a clear error, the store's sessions."""

from __future__ import annotations

import getpass
import logging
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.session import make_engine, session_factory, upgrade
from feedback.settings import CommonSettings

console = Console()
err_console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    """Rich output for a person at a terminal; one plain line per record in a log file."""
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for noisy in ("kafka", "alembic.runtime.migration", "httpx", "urllib3", "mlflow", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def default_actor() -> str:
    return f"cli:{getpass.getuser()}"


def store_sessions() -> sessionmaker[Session]:
    """Sessions on the configured database, migrated to the current schema first."""
    url = CommonSettings().resolved_database_url
    upgrade(url)
    return session_factory(make_engine(url))
