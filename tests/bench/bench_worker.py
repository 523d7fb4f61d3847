"""Worker throughput with every filter on, beside a bare consume-and-insert baseline measured in the same run.

    .venv/bin/python -m tests.bench.bench_worker [--events 20000] [--runs 3] [--postgres URL]

Starts the embedded broker on a free port, produces completions and feedback (single
answers and pairs, honest-looking timing, a few bots), then consumes the same topic twice
with separate consumer groups: (a) kafka-python + plain SQLAlchemy inserts of the raw
events, one transaction per poll, offsets committed after it; (b) the real ``Worker``
(decode, all filters, the GX suite per micro-batch, idempotent store). Start-up (GX import,
group join) is outside both timings. Prints events/s for each and the ratio per run, alternating
the two so that machine noise hits both, and the median ratio (target >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from sqlalchemy import insert

from feedback import events
from feedback.db.models import App, Completion, Feedback
from feedback.db.session import make_engine, session_factory, transaction, upgrade
from feedback.events import ChatMessage, CompletionEvent, Event, PairwiseEvent, ThumbsEvent, utcnow
from feedback.filters import FilterSettings
from feedback.producer import EventProducer
from feedback.store import completion_row, feedback_row
from feedback.worker import Worker
from feedback.worker_settings import WorkerSettings
from flywheel.stack.broker import tansu_process
from flywheel.stack.supervise import free_port

WORDS = ["water", "sleep", "light", "early", "walk", "tea", "plan", "list", "rest", "screen", "cool", "dark", "quiet",
         "routine", "steps", "note"]


def make_events(total: int, app_id: int, seed: int = 7) -> list[Event]:
    """About half completions, half feedback; a vote follows its answer after a human reading time."""
    rng = random.Random(seed)
    start = utcnow() - timedelta(days=1)
    users = [f"user{n}" for n in range(200)] + [f"bot{n}" for n in range(5)]
    prompts = [[ChatMessage(role="user", content=f"How do I {rng.choice(WORDS)} better, tip {n}?")] for n in range(50)]
    out: list[Event] = []
    while len(out) < total:
        at = start + timedelta(seconds=len(out) * 3)
        user, prompt = rng.choice(users), rng.choice(prompts)
        text = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80)))  # noqa: E731
        root = uuid.uuid4().hex
        wait = timedelta(seconds=0.5 if user.startswith("bot") else rng.uniform(8, 40))
        if rng.random() < 0.5:
            answer = CompletionEvent(app_id=app_id, response_id=f"resp_{root}", user_id=user, model_version="1",
                                     messages=prompt, answer=text(), latency_ms=900, created_at=at)
            vote: Event = ThumbsEvent(app_id=app_id, response_id=answer.response_id, user_id=user,
                                      rating=rng.choice(["up", "down"]), created_at=at + wait)
            out += [answer, vote]
        else:
            pair = [CompletionEvent(app_id=app_id, response_id=f"resp_{root}_{side}", pair_id=f"pair_{root}",
                                    user_id=user, model_version="1", messages=prompt, answer=text(), latency_ms=900,
                                    created_at=at) for side in "ab"]
            vote = PairwiseEvent(app_id=app_id, pair_id=f"pair_{root}", user_id=user, created_at=at + wait,
                                 choice="a" if user.startswith("bot") else rng.choice(["a", "b", "tie"]))
            out += [*pair, vote]
    return out[:total]


def bare_consume_and_insert(settings: WorkerSettings, url: str, expected: int) -> float:
    """The baseline: decode and plain INSERTs, one transaction per poll, offsets committed after it."""
    sessions = session_factory(make_engine(url))
    consumer = KafkaConsumer(settings.kafka_topic, bootstrap_servers=settings.bootstrap_servers,
                             group_id=f"bench-bare-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                             auto_offset_reset="earliest",
                             max_poll_records=settings.worker_max_batch, session_timeout_ms=2000,
                             heartbeat_interval_ms=500)
    done, started = 0, 0.0
    while done < expected:
        records = consumer.poll(timeout_ms=200, max_records=settings.worker_max_batch)
        if not records:
            continue
        started = started or time.perf_counter()
        decoded = [events.decode(r.value) for batch in records.values() for r in batch]
        completions = [completion_row(e) for e in decoded if isinstance(e, CompletionEvent)]
        feedback = [feedback_row(e, 1.0) for e in decoded if not isinstance(e, CompletionEvent)]
        with transaction(sessions) as session:
            if completions:
                session.execute(insert(Completion), completions)
            if feedback:
                session.execute(insert(Feedback), feedback)
        consumer.commit()
        done += len(decoded)
    elapsed = time.perf_counter() - started
    consumer.close()
    return done / elapsed


def filtering_worker(settings: WorkerSettings, expected: int) -> tuple[float, dict[str, int]]:
    worker = Worker(settings, FilterSettings(_env_file=None))  # type: ignore[call-arg]
    done, started, outcomes = 0, 0.0, dict[str, int]()
    try:
        while done < expected:
            result = worker.step()
            if result is None:
                continue
            started = started or time.perf_counter()
            for (_kind, outcome), n in result.outcomes.items():
                outcomes[outcome] = outcomes.get(outcome, 0) + n
                done += n
        elapsed = time.perf_counter() - started
    finally:
        worker.close()
    return done / elapsed, outcomes


def measure(url: str, bootstrap: str, topic: str, expected: int, make_url: Callable[[str], str], runs: int) -> None:
    """``runs`` alternating pairs (bare, then worker), each on fresh databases; per-run ratios and their median."""
    common: dict[str, Any] = {"kafka_bootstrap_servers": bootstrap, "kafka_topic": topic,
                              "worker_poll_timeout_ms": 200, "worker_session_timeout_ms": 2000,
                              "worker_heartbeat_interval_ms": 500}
    ratios = []
    for run in range(1, runs + 1):
        bare_url, worker_url = make_url(f"bare{run}"), make_url(f"worker{run}")
        for target in (bare_url, worker_url):
            upgrade(target)
            with transaction(session_factory(make_engine(target))) as session:
                session.add(App(id=1, name="bench", key_hash="0" * 64, key_prefix="bench"))
        bare_settings = WorkerSettings(_env_file=None, database_url=bare_url, **common)  # type: ignore[call-arg]
        bare = bare_consume_and_insert(bare_settings, bare_url, expected)
        group = f"bench-worker-{uuid.uuid4().hex[:6]}"
        worker_settings = WorkerSettings(_env_file=None, database_url=worker_url,  # type: ignore[call-arg]
                                         worker_group_id=group, **common)
        rate, outcomes = filtering_worker(worker_settings, expected)
        ratios.append(rate / bare)
        print(f"[{url}] run {run}: bare consume-and-insert {bare:8.0f} events/s, worker with all filters "
              f"{rate:8.0f} events/s, ratio {rate / bare:.2f}  outcomes {outcomes}")
    print(f"[{url}] median ratio worker/bare over {runs} runs: {statistics.median(ratios):.2f} (target >= 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3, help="alternating bare/worker pairs; the median ratio counts")
    parser.add_argument("--postgres", metavar="URL", help="also measure on this PostgreSQL maintenance database")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    port = free_port()
    with tansu_process(port, work / "tansu.log"):
        bootstrap = f"127.0.0.1:{port}"
        topic = f"bench.{uuid.uuid4().hex[:8]}"
        producer = EventProducer(WorkerSettings(_env_file=None, kafka_bootstrap_servers=bootstrap,  # type: ignore[call-arg]
                                                kafka_topic=topic), linger_ms=20)
        batch = make_events(args.events, app_id=1)
        asyncio.run(producer.send_many(batch))
        producer.close()
        measure("sqlite", bootstrap, topic, len(batch), lambda name: f"sqlite:///{work / name}.db", args.runs)
        if args.postgres:
            import sqlalchemy as sa

            admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")

            def pg(name: str) -> str:
                database = f"flywheel_bench_{name}_{uuid.uuid4().hex[:8]}"
                with admin.connect() as conn:
                    conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
                return admin.url.set(database=database).render_as_string(hide_password=False)

            measure("postgresql", bootstrap, topic, len(batch), pg, args.runs)


if __name__ == "__main__":
    main()
