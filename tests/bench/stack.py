"""A throwaway embedded stack for benchmarks: broker, engine, gateway (and a worker) in temp dirs.

Benchmarks compare Flywheel against a bare baseline in the same run, so both sides share
this one broker and engine and the machine's noise hits both alike. The broker and engine
(the slow part: about a minute for vLLM) are ``backend``; ``service`` adds a gateway, and a
worker if asked, in a data dir and topic of its own, so several measurements can share one
engine without seeing each other's events.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from feedback.apps import create_app as create_api_app
from feedback.db.session import make_engine, session_factory, transaction, upgrade
from feedback.filters import FilterSettings
from feedback.producer import ensure_topic
from feedback.worker import Worker
from flywheel.stack.broker import tansu_process
from flywheel.stack.engine import vllm_process
from flywheel.stack.services import flywheel_process
from flywheel.stack.supervise import free_port
from serving.settings import ServingSettings
from trainer.base_model import build_tiny_model
from trainer.config import TrainerSettings
from trainer.registry import Registry


@dataclass
class Backend:
    """A running broker and engine."""

    model: Path
    kafka: str
    engine_port: int


@dataclass
class BenchStack:
    settings: ServingSettings
    gateway: str
    key: str


@contextmanager
def backend(model: Path | None, workdir: Path) -> Iterator[Backend]:
    """Broker + engine (``model`` or a tiny random Llama) on free ports, logs in ``workdir``; stopped on exit."""
    model = model or build_tiny_model(workdir / "tiny")
    kafka_port, engine_port = free_port(), free_port()
    settings = ServingSettings(data_dir=workdir, base_model=model, engine_port=engine_port,
                               engine_kv_cache_gb=1, engine_max_model_len=1024)
    with tansu_process(kafka_port, workdir / "broker.log"), vllm_process(settings, model, workdir / "engine.log"):
        yield Backend(model, f"127.0.0.1:{kafka_port}", engine_port)


@contextmanager
def service(shared: Backend, data_dir: Path, worker: FilterSettings | None = None) -> Iterator[BenchStack]:
    """A gateway (and, given filter settings, a worker thread) on ``shared``, with its own database and topic."""
    settings = ServingSettings(
        data_dir=data_dir, base_model=shared.model, kafka_bootstrap_servers=shared.kafka,
        kafka_topic=f"bench-{time.time_ns()}", engine_port=shared.engine_port, port=free_port(),
        engine_kv_cache_gb=1, engine_max_model_len=1024,
    )
    settings = settings.model_copy(update={"engine_url": settings.resolved_engine_url})
    upgrade(settings.resolved_database_url)
    ensure_topic(settings)
    sessions = session_factory(make_engine(settings.resolved_database_url))
    Registry(TrainerSettings(data_dir=data_dir, base_model=shared.model), sessions).ensure_bootstrap()
    with transaction(sessions) as session:
        _, key = create_api_app(session, "bench")
    stop = threading.Event()
    worker_thread = threading.Thread(target=Worker(settings, worker).run, args=(stop,), daemon=True) if worker else None
    if worker_thread is not None:
        worker_thread.start()
    gateway = f"http://127.0.0.1:{settings.port}"
    # The gateway is its own process, as in production: a thread would share this process's GIL
    # with the load generator and make the gateway look slower than it is.
    serve = flywheel_process("serve", settings, ready=lambda: httpx.get(f"{gateway}/readyz", timeout=2).is_success)
    try:
        with serve:
            yield BenchStack(settings, gateway, key)
    finally:
        stop.set()
        if worker_thread is not None:
            worker_thread.join(30)


@contextmanager
def bench_stack(model: Path | None) -> Iterator[BenchStack]:
    """Broker + engine + gateway in one temp dir, without a worker; all stopped on exit."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flywheel-bench-")))
        shared = stack.enter_context(backend(model, tmp))
        yield stack.enter_context(service(shared, tmp))
