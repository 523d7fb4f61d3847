"""``flywheel up``, ``serve`` and ``worker``: the long-running services."""

from __future__ import annotations

import threading

import typer
import uvicorn

from flywheel.cli.common import console, fail, setup_logging
from flywheel.stack.supervise import ProcessFailed
from serving.settings import ServingSettings


def up(
    mlflow_ui_port: int = typer.Option(5000, help="Port of the MLflow UI."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Start the whole embedded stack: broker, MLflow UI, vLLM engine, gateway and worker. Ctrl-C stops it."""
    from flywheel.stack.services import run_stack  # imports the trainer (torch): only this command needs it

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
    from flywheel.stack.engine import VllmLauncher
    from serving.app import create_app
    from trainer.config import TrainerSettings
    from trainer.registry import Registry

    setup_logging(verbose)
    settings = ServingSettings()
    upgrade(settings.resolved_database_url)
    Registry(TrainerSettings(), session_factory(make_engine(settings.resolved_database_url))).ensure_bootstrap()
    launcher = VllmLauncher(settings) if settings.engine_launcher == "vllm" else None  # for full-model versions
    uvicorn.run(create_app(settings, launcher), host=settings.host, port=settings.port, log_config=None,
                access_log=verbose)


def worker(
    metrics_port: int = typer.Option(9101, help="Port of the worker's Prometheus /metrics (0: none)."),
    metrics_host: str = typer.Option("127.0.0.1", help="Address the metrics port binds to."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the feedback worker alone: consume events, filter, store; offsets commit after the database."""
    from prometheus_client import start_http_server
    from pydantic import ValidationError

    from feedback.db.session import upgrade
    from feedback.filters import FilterSettings
    from feedback.worker import Worker
    from feedback.worker_settings import WorkerSettings

    setup_logging(verbose)
    try:
        filters = FilterSettings()
    except ValidationError as exc:  # e.g. a simulation's time scale outside a simulation: say so, no traceback
        fail("; ".join(error["msg"] for error in exc.errors()))
    settings = WorkerSettings()
    upgrade(settings.resolved_database_url)
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host)
    stop = threading.Event()
    try:
        Worker(settings, filters).run(stop)
    except KeyboardInterrupt:
        stop.set()
