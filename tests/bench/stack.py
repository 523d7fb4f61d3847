"""A throwaway embedded stack for benchmarks: broker, engine, gateway (and a worker) in temp dirs.

Benchmarks compare Flywheel against a bare baseline in the same run, so both sides share
this one broker and engine and the machine's noise hits both alike. The broker and engine
(the slow part: about a minute for vLLM) are ``backend``; ``service`` adds a gateway, and
workers if asked, in a data dir and topic of its own, so several measurements can share one
engine without seeing each other's events. Workers run as ``flywheel worker`` processes, as in
production: ``replicas`` of them in one consumer group split the topic's partitions and share
their history through the database (``feedback/filters/replicas.py``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from feedback.apps import create_app as create_api_app
from feedback.db.session import make_engine, session_factory, transaction, upgrade
from feedback.filters import FilterSettings
from feedback.producer import ensure_topic
from flywheel.stack.broker import tansu_process
from flywheel.stack.engine import vllm_process
from flywheel.stack.services import child_env, flywheel_process
from flywheel.stack.supervise import ManagedProcess, ProcessFailed, free_port
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
class WorkerReplica:
    """One ``flywheel worker`` process of a consumer group, and the address of its Prometheus metrics."""

    process: ManagedProcess
    metrics: str

    def _samples(self, family_name: str) -> list[Sample]:
        text = httpx.get(self.metrics, timeout=5).text
        return [sample for family in text_string_to_metric_families(text) if family.name == family_name
                for sample in family.samples]

    def partitions(self) -> set[int]:
        """The partitions this replica has stored batches from: the labels of its ``flywheel_worker_lag`` gauge,
        set per partition after each stored batch (a partition a rebalance moved away keeps its label)."""
        return {int(sample.labels["partition"]) for sample in self._samples("flywheel_worker_lag")}

    def events(self) -> int:
        """How many decoded events this replica handled (its ``flywheel_worker_events`` counter, every outcome)."""
        return round(sum(s.value for s in self._samples("flywheel_worker_events") if s.name.endswith("_total")))


@dataclass
class BenchStack:
    settings: ServingSettings
    gateway: str
    key: str
    workers: list[WorkerReplica]

    def check_workers(self) -> None:
        """Raise if a worker died: its votes would stay unjudged and the figures would only say "pending"."""
        for replica in self.workers:
            if not replica.process.alive:
                raise ProcessFailed(f"{replica.process.name} exited:\n{replica.process.log_tail()}")


@contextmanager
def backend(model: Path | None, workdir: Path) -> Iterator[Backend]:
    """Broker + engine (``model`` or a tiny random Llama) on free ports, logs in ``workdir``; stopped on exit."""
    model = model or build_tiny_model(workdir / "tiny")
    kafka_port, engine_port = free_port(), free_port()
    settings = ServingSettings(data_dir=workdir, base_model=model, engine_port=engine_port,
                               engine_kv_cache_gb=1, engine_max_model_len=1024)
    with tansu_process(kafka_port, workdir / "broker.log"), vllm_process(settings, model, workdir / "engine.log"):
        yield Backend(model, f"127.0.0.1:{kafka_port}", engine_port)


def answers(url: str) -> bool:
    """The readiness probe of a child with an HTTP endpoint: ``url`` answers 2xx."""
    return httpx.get(url, timeout=2).is_success


def filter_env(filters: FilterSettings) -> dict[str, str]:
    """The environment under which a ``flywheel worker`` child builds exactly ``filters`` (every field, so the
    parent's own ``FLYWHEEL_FILTER_*`` variables cannot differ in the child). A field that is None is left out:
    its default is None too."""
    prefix = FilterSettings.model_config.get("env_prefix", "")
    env = {}
    for name, field in FilterSettings.model_fields.items():
        value = getattr(filters, name)
        if value is not None:
            alias = field.validation_alias
            env[alias if isinstance(alias, str) else f"{prefix}{name}".upper()] = str(value)
    return env


@contextmanager
def worker_replicas(settings: ServingSettings, filters: FilterSettings, replicas: int) -> Iterator[list[WorkerReplica]]:
    """``replicas`` ``flywheel worker`` processes in one consumer group (``settings``' database and topic), each
    with its own log (``logs/worker-N.log``) and metrics port; all stopped on exit. The topic must already have
    at least ``replicas`` partitions, or a replica would idle."""
    with ExitStack() as stack:
        started = []
        for n in range(1, replicas + 1):
            port = free_port()
            metrics = f"http://127.0.0.1:{port}/metrics"
            process = ManagedProcess(
                f"worker {n}/{replicas}", [sys.executable, "-m", "flywheel", "worker", "--metrics-port", str(port)],
                settings.data_dir / "logs" / f"worker-{n}.log",
                ready=partial(answers, metrics),
                env=child_env(settings) | filter_env(filters), startup_timeout=120,
            )
            stack.callback(process.stop)
            started.append(WorkerReplica(process.start(), metrics))
        for replica in started:  # started side by side: their imports overlap, and they join the group together
            replica.process.wait_ready()
        yield started


@contextmanager
def service(shared: Backend, data_dir: Path, worker: FilterSettings | None = None,
            replicas: int = 1) -> Iterator[BenchStack]:
    """A gateway (and, given filter settings, ``replicas`` worker processes in one consumer group) on ``shared``,
    with its own database and topic; the topic gets at least one partition per replica."""
    settings = ServingSettings(
        data_dir=data_dir, base_model=shared.model, kafka_bootstrap_servers=shared.kafka,
        kafka_topic=f"bench-{time.time_ns()}", engine_port=shared.engine_port, port=free_port(),
        engine_kv_cache_gb=1, engine_max_model_len=1024,
    )
    settings = settings.model_copy(update={"engine_url": settings.resolved_engine_url,
                                           "kafka_partitions": max(settings.kafka_partitions, replicas)})
    upgrade(settings.resolved_database_url)
    ensure_topic(settings)
    sessions = session_factory(make_engine(settings.resolved_database_url))
    Registry(TrainerSettings(data_dir=data_dir, base_model=shared.model), sessions).ensure_bootstrap()
    with transaction(sessions) as session:
        _, key = create_api_app(session, "bench")
    gateway = f"http://127.0.0.1:{settings.port}"
    # The gateway is its own process, as in production: a thread would share this process's GIL
    # with the load generator and make the gateway look slower than it is.
    serve = flywheel_process("serve", settings, ready=partial(answers, f"{gateway}/readyz"))
    with ExitStack() as running:
        workers = running.enter_context(worker_replicas(settings, worker, replicas)) if worker else []
        running.enter_context(serve)
        yield BenchStack(settings, gateway, key, workers)


@contextmanager
def bench_stack(model: Path | None) -> Iterator[BenchStack]:
    """Broker + engine + gateway in one temp dir, without a worker; all stopped on exit."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flywheel-bench-")))
        shared = stack.enter_context(backend(model, tmp))
        yield stack.enter_context(service(shared, tmp))
