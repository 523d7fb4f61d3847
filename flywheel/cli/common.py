"""What every command shares: logging and the exit on a clear error."""

from __future__ import annotations

import getpass
import logging
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

console = Console()
err_console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=True)],
        force=True,
    )
    for noisy in ("kafka", "alembic.runtime.migration", "httpx", "urllib3", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def default_actor() -> str:
    return f"cli:{getpass.getuser()}"
