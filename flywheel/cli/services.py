"""``flywheel up``, ``serve`` and ``worker``: the long-running services."""

from __future__ import annotations

import threading

import typer
import uvicorn

from feedback.supervise import ProcessFailed
from flywheel.cli.common import console, fail, setup_logging
from serving.settings import ServingSettings


def up(
    mlflow_ui_port: int = typer.Option(5000, help="Port of the MLflow UI."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Start the whole embedded stack: broker, MLflow UI, vLLM engine, gateway and worker. Ctrl-C stops it."""
    from flywheel.stack import run_stack  # imports the trainer (torch): only this command needs it

    setup_logging(verbose)
    try:
        run_stack(ServingSettings(), console, mlflow_ui_port)
    except ProcessFailed as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # stopped while starting: everything started so far was stopped
        raise typer.Exit(130) from None


def serve(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the gateway alone, against the engine, broker, database and registry in FLYWHEEL_* settings.

    On first start it migrates the store and registers the base model as version 1, champion.
    """
    from feedback.db.session import make_engine, session_factory, upgrade
    from serving.app import create_app
    from trainer.config import TrainerSettings
    from trainer.registry import Registry

    setup_logging(verbose)
    settings = ServingSettings()
    upgrade(settings.resolved_database_url)
    Registry(TrainerSettings(), session_factory(make_engine(settings.resolved_database_url))).ensure_bootstrap()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=verbose)


def worker(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the feedback worker alone: consume events, filter, store; offsets commit after the database."""
    from feedback.worker import Worker

    setup_logging(verbose)
    stop = threading.Event()
    try:
        Worker().run(stop)
    except KeyboardInterrupt:
        stop.set()
