"""A throwaway embedded stack for benchmarks: broker, engine and gateway in temp dirs.

Benchmarks compare Flywheel against a bare baseline in the same run, so both sides share
this one broker and engine and the machine's noise hits both alike.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from feedback.apps import create_app as create_api_app
from feedback.broker import tansu_process
from feedback.db.session import make_engine, session_factory, transaction, upgrade
from feedback.producer import ensure_topic
from feedback.supervise import free_port, wait_for
from serving.app import create_app
from serving.engine import vllm_process
from serving.settings import ServingSettings
from trainer.base_model import build_tiny_model
from trainer.config import TrainerSettings
from trainer.registry import Registry


@dataclass
class BenchStack:
    settings: ServingSettings
    gateway: str
    key: str


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


@contextmanager
def bench_stack(model: Path | None) -> Iterator[BenchStack]:
    """Broker + engine (``model`` or a tiny random Llama) + gateway on free ports; all stopped on exit."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flywheel-bench-")))
        model = model or build_tiny_model(tmp / "tiny")
        kafka_port = free_port()
        stack.enter_context(tansu_process(kafka_port, tmp / "broker.log"))
        settings = ServingSettings(
            data_dir=tmp, base_model=model, kafka_bootstrap_servers=f"127.0.0.1:{kafka_port}",
            engine_port=free_port(), port=free_port(), engine_kv_cache_gb=1, engine_max_model_len=1024,
        )
        settings = settings.model_copy(update={"engine_url": settings.resolved_engine_url})
        stack.enter_context(vllm_process(settings, model, tmp / "engine.log"))
        upgrade(settings.resolved_database_url)
        ensure_topic(settings)
        sessions = session_factory(make_engine(settings.resolved_database_url))
        Registry(TrainerSettings(data_dir=tmp, base_model=model), sessions).ensure_bootstrap()
        with transaction(sessions) as session:
            _, key = create_api_app(session, "bench")
        server = _Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_config=None))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        gateway = f"http://127.0.0.1:{settings.port}"
        wait_for(lambda: httpx.get(f"{gateway}/readyz", timeout=2).is_success, 60, "gateway")
        try:
            yield BenchStack(settings, gateway, key)
        finally:
            server.should_exit = True
            thread.join(30)
