"""The embedded stack behind ``flywheel up``: every service of the loop on one machine.

Broker, MLflow UI and engine are external programs; gateway and worker run as
``python -m flywheel serve|worker`` children with the same settings, exactly as they
would run alone in production. A child that dies is restarted with back-off while the others
keep running (``flywheel.stack.supervise.Supervisor``), and every child dies with this process, even
when it is SIGKILLed. ``start_services`` is the start-up both ``flywheel up`` and ``flywheel demo``
use; it first checks that every port it needs is free and names the ones that are not.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.table import Table

from feedback.apps import create_app, list_apps
from feedback.db.session import make_engine, session_factory, transaction, upgrade
from feedback.producer import ensure_topic
from flywheel.stack.broker import tansu_process
from flywheel.stack.engine import vllm_process
from flywheel.stack.supervise import ManagedProcess, Supervisor, check_ports_free
from flywheel.stack.tracking_server import mlflow_ui_process
from serving.settings import ServingSettings
from trainer.base_model import ensure_base_model

log = logging.getLogger(__name__)


def child_env(settings: ServingSettings) -> dict[str, str]:
    """The FLYWHEEL_* environment under which a child process sees exactly these settings."""
    return {
        "FLYWHEEL_DATA_DIR": str(settings.data_dir),
        "FLYWHEEL_DATABASE_URL": settings.resolved_database_url,
        "FLYWHEEL_MLFLOW_TRACKING_URI": settings.resolved_mlflow_uri,
        "FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FLYWHEEL_KAFKA_TOPIC": settings.kafka_topic,
        "FLYWHEEL_BASE_MODEL": str(settings.resolved_base_model),
        "FLYWHEEL_ENGINE_URL": settings.resolved_engine_url,
        "FLYWHEEL_HOST": settings.host,
        "FLYWHEEL_PORT": str(settings.port),
    }


def flywheel_process(
    command: str, settings: ServingSettings, ready: Callable[[], bool], args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """``python -m flywheel COMMAND [ARGS]`` as a child, configured like this process (plus ``env``)."""
    return ManagedProcess(
        command, [sys.executable, "-m", "flywheel", command, *args], settings.data_dir / "logs" / f"{command}.log",
        ready=ready, env=child_env(settings) | (env or {}), startup_timeout=120,
    )


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_stack(settings: ServingSettings, console: Console, mlflow_ui_port: int) -> None:
    """Start everything in dependency order, then restart what dies until Ctrl-C/SIGTERM stops all in reverse."""
    # SIGTERM (kill, systemd, a container stop) must clean up like Ctrl-C; and a shell that started us in
    # the background may have set SIGINT to "ignore", which would leave the children running.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    with ExitStack() as stack:
        procs = start_services(stack, settings, console, mlflow_ui_port=mlflow_ui_port)
        key = _first_app_key(settings)
        _print_banner(console, settings, f"http://{settings.host}:{settings.port}", mlflow_ui_port, key)
        supervisor = Supervisor(procs, on_restart=lambda _proc, why: console.print(f"[yellow]{why}[/]"))
        try:
            supervisor.run(threading.Event())
        except KeyboardInterrupt:
            console.print("stopping…")


def start_services(
    stack: ExitStack,
    settings: ServingSettings,
    console: Console,
    *,
    mlflow_ui_port: int | None = None,
    worker_args: Sequence[str] = (),
    worker_env: dict[str, str] | None = None,
) -> list[ManagedProcess]:
    """Broker, MLflow UI (given a port), engine, worker and gateway, started in that order and each
    registered on ``stack``, so leaving it stops them in reverse. ``flywheel up`` and ``flywheel demo`` share it."""
    logs = settings.data_dir / "logs"
    procs: list[ManagedProcess] = []
    broker = urlsplit(f"//{settings.bootstrap_servers[0]}")
    engine_address = urlsplit(settings.resolved_engine_url)
    check_ports_free([
        ("broker", broker.hostname or "127.0.0.1", broker.port or 9092),
        ("engine", engine_address.hostname or "127.0.0.1", engine_address.port or settings.engine_port),
        ("gateway", settings.host, settings.port),
        *([("MLflow UI", "127.0.0.1", mlflow_ui_port)] if mlflow_ui_port is not None else []),
    ])

    def start(status: str, proc: ManagedProcess) -> None:
        with console.status(status):
            procs.append(stack.enter_context(proc))

    with console.status("preparing the base model (once)…"):
        model_dir = ensure_base_model(settings)
        upgrade(settings.resolved_database_url)
    start("starting the broker…",
          tansu_process(broker.port or 9092, logs / "broker.log", broker.hostname or "127.0.0.1"))
    ensure_topic(settings)
    if mlflow_ui_port is not None:
        start("starting the MLflow UI…", mlflow_ui_process(settings, mlflow_ui_port, logs / "mlflow.log"))
    start("starting the engine (vLLM, about a minute on 2 cores)…",
          vllm_process(settings, model_dir, logs / "engine.log"))
    gateway = f"http://{settings.host}:{settings.port}"
    start("starting the worker…", flywheel_process("worker", settings, ready=lambda: True, args=worker_args,
                                                   env=worker_env))
    start("starting the gateway…", flywheel_process(
        "serve", settings, ready=lambda: httpx.get(f"{gateway}/readyz", timeout=2).is_success))
    return procs


def _first_app_key(settings: ServingSettings) -> str | None:
    """On the very first start, create an admin app so a chat works at once; later starts print nothing."""
    with transaction(session_factory(make_engine(settings.resolved_database_url))) as session:
        if list_apps(session):
            return None
        _app, key = create_app(session, "default", admin=True)
        return key


def _print_banner(console: Console, settings: ServingSettings, gateway: str, ui_port: int, key: str | None) -> None:
    table = Table(title="flywheel is up", show_header=False)
    table.add_row("gateway (OpenAI API)", f"{gateway}/v1")
    table.add_row("MLflow UI", f"http://127.0.0.1:{ui_port}")
    table.add_row("metrics", f"{gateway}/metrics, worker: http://127.0.0.1:9101/metrics")
    table.add_row("engine (vLLM)", settings.resolved_engine_url)
    table.add_row("broker (Kafka protocol)", settings.kafka_bootstrap_servers)
    table.add_row("data dir", str(settings.data_dir))
    console.print(table)
    if key:
        console.print("API key of the app [bold]default[/] (admin), shown once:")
        print(key, flush=True)
    console.print("Ctrl-C stops everything.")
