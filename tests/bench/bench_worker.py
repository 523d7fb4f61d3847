"""Worker throughput with every filter on, beside a bare consume-and-insert baseline measured in the same run.

    .venv/bin/python -m tests.bench.bench_worker [--events 20000] [--runs 3] [--postgres URL]
                                                 [--scorer [--model DIR] [--scorer-batch 16]]

Starts the embedded broker on a free port, produces completions and feedback (single
answers and pairs, honest-looking timing, a few bots), then consumes the same topic twice
with separate consumer groups: (a) kafka-python + plain SQLAlchemy inserts of the raw
events, one transaction per poll, offsets committed after it; (b) the real ``Worker``
(decode, all filters, the GX suite per micro-batch, idempotent store). Start-up (GX import,
group join) and each side's first batch are outside both timings (the worker's ``step`` fetches
and processes in one call, so a clock can only start after a whole batch, on both sides alike).
Prints events/s for each and the ratio per run, alternating the two so that machine noise hits
both, and the median ratio (target >= 0.5).

Beside each side's rate: the CPU seconds this process spent in that side's timing (every thread,
the consensus search's included; not the broker's or a scorer's, other processes) and how long the
side's thread waited in the run queue for a core (Linux's ``/proc/thread-self/schedstat``; "?"
elsewhere), and per run the ratio by CPU time (events per CPU second, worker over bare). On a
machine whose cores are busy with other work, a benchmark at ``nice 19`` waits seconds for a core
and its wall-clock rate halves while its CPU time stays the same: the "slow mode" on SQLite traced
in docs/filters.md, "Worker throughput". A low wall-clock ratio with a long wait and a steady CPU
ratio is the machine; a low CPU ratio is the worker.

``--scorer``: in production ``flywheel scorer`` runs beside the worker and competes with it for
the CPU (a transformer's forward passes against the worker's Python), so this measures the
worker under that load. **Both sides** run with the real scorer beside them, each its own
``python -m flywheel scorer`` process on that side's database, started and ready (model loaded)
before the side's timing: the ratio then compares the two under the same competing load. The
reward model is built the way a round builds one (``trainer/reward.py``: the trainer's default
backbone, MiniLM, or ``--model DIR``, with a fresh score head; untrained weights cost the same
to run), logged to a real MLflow store in the temp dir as the round logs it, and each database
holds a last round's published scores, which is what makes the scorer load that model. Printed
beside each side: the answers the scorer stored per second during that side's timing (its
``reward_scores`` rows with ``scored_at`` inside the window). Two of the CLI's options differ from
production, both so that a few seconds' count means something: ``--batch 16`` (64 by default;
the count moves in steps of it, and MiniLM scored as many answers/s in batches of 8 as of 64)
and ``--poll 0.2`` (2 s by default; a side's answers arrive in a burst at its start, where a
live scorer would already be busy).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from feedback import events
from feedback.db.models import App, Completion, Feedback, RewardScore
from feedback.db.session import make_engine, session_factory, transaction, upgrade
from feedback.events import ChatMessage, CompletionEvent, Event, PairwiseEvent, ThumbsEvent, utcnow
from feedback.filters import FilterSettings
from feedback.producer import EventProducer
from feedback.store import completion_row, feedback_row
from feedback.worker import Worker
from feedback.worker_settings import WorkerSettings
from flywheel.stack.broker import tansu_process
from flywheel.stack.supervise import ManagedProcess, ProcessFailed, free_port

if TYPE_CHECKING:  # torch and transformers only with --scorer
    from trainer.config import TrainConfig
    from trainer.reward import RewardModel

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


def cpu_seconds() -> float:
    """CPU seconds this process has spent, every thread (ended ones too), user and system."""
    spent = os.times()
    return spent.user + spent.system


def run_queue_wait() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a core (Linux's schedstat); None elsewhere."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Window:
    """One side's timing: the events it handled after its first batch, in how many seconds, and when it started.

    The start is kept on the wall clock (``utcnow``) as well, because the scorer stamps its rows with
    ``scored_at`` and its work is counted inside this window. Over the same window: the process's CPU
    seconds and the side's thread's wait for a core (``waited``, None where the system does not say).
    """

    events: int = 0
    seconds: float = 0.0
    started: datetime | None = None
    outcomes: dict[str, int] = field(default_factory=dict)  # the worker's verdicts; empty for the bare side
    cpu: float = 0.0
    waited: float | None = None
    _clock: float = 0.0
    _cpu: float = 0.0
    _waited: float | None = None

    def batch_done(self, n: int) -> None:
        """The first batch only starts the clock (group join and first fetch stay outside); later ones count."""
        now, cpu, waited = time.perf_counter(), cpu_seconds(), run_queue_wait()
        if self.started is None:
            self.started, self._clock, self._cpu, self._waited = utcnow(), now, cpu, waited
        else:
            self.events += n
            self.seconds = now - self._clock
            self.cpu = cpu - self._cpu
            self.waited = None if waited is None or self._waited is None else waited - self._waited

    @property
    def rate(self) -> float:
        if not self.seconds:
            raise ValueError("every event came in the first batch: nothing was timed (raise --events)")
        return self.events / self.seconds

    @property
    def cpu_rate(self) -> float:
        """Events per CPU second of this process."""
        return self.events / self.cpu if self.cpu else math.inf

    @property
    def usage(self) -> str:
        """The CPU seconds and the wait for a core, as printed beside the rate."""
        waited = "?" if self.waited is None else f"{self.waited:.1f}"
        return f"cpu {self.cpu:.1f} s, waited {waited} s for a core"

    @property
    def ended(self) -> datetime:
        assert self.started is not None
        return self.started + timedelta(seconds=self.seconds)


@cache
def sessions_on(url: str) -> sessionmaker[Session]:
    """One engine per database: the scorer's readiness probe asks every half second, and each new engine
    would keep a connection open."""
    return session_factory(make_engine(url))


def insert_raw(session: Session, decoded: list[Event]) -> None:
    """The baseline's store: plain INSERTs of completions and of every vote (weight 1), nothing checked."""
    completions = [completion_row(e) for e in decoded if isinstance(e, CompletionEvent)]
    feedback = [feedback_row(e, 1.0) for e in decoded if not isinstance(e, CompletionEvent)]
    if completions:
        session.execute(insert(Completion), completions)
    if feedback:
        session.execute(insert(Feedback), feedback)


def bare_consume_and_insert(settings: WorkerSettings, url: str, expected: int) -> Window:
    """The baseline: decode and plain INSERTs, one transaction per poll, offsets committed after it."""
    sessions = session_factory(make_engine(url))
    consumer = KafkaConsumer(settings.kafka_topic, bootstrap_servers=settings.bootstrap_servers,
                             group_id=f"bench-bare-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                             auto_offset_reset="earliest",
                             max_poll_records=settings.worker_max_batch, session_timeout_ms=2000,
                             heartbeat_interval_ms=500)
    done, window = 0, Window()
    while done < expected:
        records = consumer.poll(timeout_ms=200, max_records=settings.worker_max_batch)
        if not records:
            continue
        decoded = [events.decode(r.value) for batch in records.values() for r in batch]
        with transaction(sessions) as session:
            insert_raw(session, decoded)
        consumer.commit()
        done += len(decoded)
        window.batch_done(len(decoded))
    consumer.close()
    return window


def filtering_worker(settings: WorkerSettings, expected: int) -> Window:
    """The real ``Worker`` (every filter), one ``step`` (poll, filter, store, commit) per batch."""
    worker = Worker(settings, FilterSettings(_env_file=None))  # type: ignore[call-arg]
    done, window = 0, Window()
    try:
        while done < expected:
            result = worker.step()
            if result is None:
                continue
            handled = 0
            for (_kind, outcome), n in result.outcomes.items():
                window.outcomes[outcome] = window.outcomes.get(outcome, 0) + n
                handled += n
            done += handled
            window.batch_done(handled)
    finally:
        worker.close()
    return window


class ScorerBeside:
    """The real ``flywheel scorer`` as its own process beside one side at a time, with a real reward model.

    The model is built as a round builds its reward model and logged to an MLflow store in
    ``work`` as the round logs it (``trainer/reward_artifact.py``). The scorer follows the run
    whose scores ``reward_scores`` holds, so every database first gets a last round's scores
    (``publish``); without them the scorer would idle and compete for nothing.
    """

    READY = "scoring with the reward model of run"  # the scorer's log line once the model is loaded
    NO_MODEL = "logged no reward model"
    POLL_S = 0.2  # the CLI's --poll: a side's first answers come in a burst, not after a 2 s nap
    LAST_ROUND_ACCURACY = 0.7

    def __init__(self, work: Path, backbone: Path | None, batch: int) -> None:
        from trainer.config import TrainConfig, TrainerSettings
        from trainer.registry import Registry
        from trainer.reward import default_backbone
        from trainer.reward_artifact import log_reward_model

        self.work, self.batch = work, batch
        self.config = TrainConfig()
        self.settings = TrainerSettings(_env_file=None, data_dir=work,  # type: ignore[call-arg]
                                        mlflow_tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
        self.backbone = backbone or self.settings.reward_backbone or default_backbone()
        self.model = reward_model_as_a_round_builds_it(self.backbone, self.config)
        registry = Registry(self.settings, session_factory(make_engine(self.settings.resolved_database_url)))
        self.run_id = registry.client.create_run(registry.experiment_id(), run_name="bench-reward-model").info.run_id
        log_reward_model(registry.client, self.run_id, self.model)

    def publish(self, url: str) -> None:
        """A last round on ``url``: a few voted answers, scored and published by the trainer's own function."""
        from trainer.reward_scores import publish_reward_scores

        with transaction(sessions_on(url)) as session:
            insert_raw(session, make_events(6, app_id=1, seed=1))
        publish_reward_scores(self.model, self.LAST_ROUND_ACCURACY, sessions_on(url), self.run_id,
                              self.config.reward_score_limit)

    @contextmanager
    def running(self, url: str, side: str) -> Iterator[None]:
        """``python -m flywheel scorer`` on ``url``, ready (model downloaded and loaded) before the body runs."""
        log_path = self.work / "logs" / f"scorer-{side}.log"

        def ready() -> bool:
            """Model loaded, and the last round's unvoted answers scored: from here on it scores only the side's."""
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            if self.NO_MODEL in text:
                raise ProcessFailed(f"the scorer found no reward model in run {self.run_id}; see {log_path}")
            return self.READY in text and not self._unscored(url)

        env = {"FLYWHEEL_DATA_DIR": str(self.work), "FLYWHEEL_DATABASE_URL": url,
               "FLYWHEEL_MLFLOW_TRACKING_URI": self.settings.resolved_mlflow_uri}
        argv = [sys.executable, "-m", "flywheel", "scorer", "--batch", str(self.batch), "--poll", str(self.POLL_S)]
        with ManagedProcess(f"scorer ({side})", argv, log_path, ready, env=env, startup_timeout=300):
            yield

    @staticmethod
    def _unscored(url: str) -> int:
        with sessions_on(url)() as session:
            return session.scalar(select(func.count()).select_from(Completion).where(
                Completion.response_id.not_in(select(RewardScore.response_id)))) or 0

    def answers_in(self, url: str, window: Window) -> int:
        """The scorer's rows stamped inside ``window`` (it commits ``batch`` rows per step, so the count moves in
        steps of that; a step still running at the end is not counted)."""
        with sessions_on(url)() as session:
            return session.scalar(select(func.count()).select_from(RewardScore).where(
                RewardScore.run_id == self.run_id, RewardScore.scored_at >= window.started,
                RewardScore.scored_at <= window.ended)) or 0


def reward_model_as_a_round_builds_it(backbone: Path, config: TrainConfig) -> RewardModel:
    """``train_reward_model``'s members before training: the backbone with a fresh one-output head and the
    tokenizer's pad id, a round's ensemble size and max length. Scoring costs the same trained or not."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer.reward import RewardModel

    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    members = []
    for k in range(config.reward_ensemble):
        torch.manual_seed(config.seed + k)
        member = AutoModelForSequenceClassification.from_pretrained(str(backbone), num_labels=1)
        member.config.pad_token_id = tokenizer.pad_token_id
        members.append(member)
    return RewardModel(members, tokenizer, config.reward_max_length)


def timed_side(scorer: ScorerBeside | None, url: str, side: str,
               timed: Callable[[], Window]) -> tuple[Window, float | None, str]:
    """Run one side's ``timed`` measurement, with the scorer beside it if there is one: its window, the
    scorer's answers/s during it, and that as printed text."""
    if scorer is None:
        return timed(), None, ""
    with scorer.running(url, side):
        window = timed()
        answers = scorer.answers_in(url, window)
    rate = answers / window.seconds
    return window, rate, f" (scorer beside: {answers} answers, {rate:.1f}/s)"


def measure(url: str, bootstrap: str, topic: str, expected: int, make_url: Callable[[str], str], runs: int,
            scorer: ScorerBeside | None = None) -> None:
    """``runs`` alternating pairs (bare, then worker), each on fresh databases; per-run ratios and their median.

    With ``scorer``, each side runs with its own scorer process beside it on its database."""
    common: dict[str, Any] = {"kafka_bootstrap_servers": bootstrap, "kafka_topic": topic,
                              "worker_poll_timeout_ms": 200, "worker_session_timeout_ms": 2000,
                              "worker_heartbeat_interval_ms": 500}
    print(f"[{url}] " + (f"`flywheel scorer` (batch {scorer.batch}, reward backbone {scorer.backbone}) runs beside "
                         "BOTH sides, each on its own database" if scorer else "no scorer running"))
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    scored: dict[str, list[float]] = {"bare": [], "worker": []}
    for run in range(1, runs + 1):
        bare_url, worker_url = make_url(f"bare{run}"), make_url(f"worker{run}")
        for target in (bare_url, worker_url):
            upgrade(target)
            with transaction(session_factory(make_engine(target))) as session:
                session.add(App(id=1, name="bench", key_hash="0" * 64, key_prefix="bench"))
            if scorer:
                scorer.publish(target)
        bare_settings = WorkerSettings(_env_file=None, database_url=bare_url, **common)  # type: ignore[call-arg]
        bare, bare_scored, bare_note = timed_side(scorer, bare_url, f"bare{run}",
                                       partial(bare_consume_and_insert, bare_settings, bare_url, expected))
        group = f"bench-worker-{uuid.uuid4().hex[:6]}"
        worker_settings = WorkerSettings(_env_file=None, database_url=worker_url,  # type: ignore[call-arg]
                                         worker_group_id=group, **common)
        worker, worker_scored, worker_note = timed_side(scorer, worker_url, f"worker{run}",
                                           partial(filtering_worker, worker_settings, expected))
        ratios.append(worker.rate / bare.rate)
        cpu_ratios.append(worker.cpu_rate / bare.cpu_rate)
        for side, value in (("bare", bare_scored), ("worker", worker_scored)):
            if value is not None:
                scored[side].append(value)
        print(f"[{url}] run {run}: bare consume-and-insert {bare.rate:8.0f} events/s ({bare.usage}){bare_note}, "
              f"worker with all filters {worker.rate:8.0f} events/s ({worker.usage}){worker_note}, "
              f"ratio {ratios[-1]:.2f} (by CPU time {cpu_ratios[-1]:.2f})  outcomes {worker.outcomes}")
    print(f"[{url}] median ratio worker/bare over {runs} runs: {statistics.median(ratios):.2f} (target >= 0.5; "
          f"by CPU time {statistics.median(cpu_ratios):.2f})"
          + (f"; scorer median {statistics.median(scored['worker']):.1f} answers/s during the worker's timing, "
             f"{statistics.median(scored['bare']):.1f} during the bare's" if scorer else ", no scorer running"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3, help="alternating bare/worker pairs; the median ratio counts")
    parser.add_argument("--postgres", metavar="URL", help="also measure on this PostgreSQL maintenance database "
                                                          "(postgresql+psycopg://...)")
    parser.add_argument("--scorer", action="store_true",
                        help="run `flywheel scorer` beside both sides (see above)")
    parser.add_argument("--model", metavar="DIR", type=Path,
                        help="with --scorer: HF folder of the reward model's backbone, as FLYWHEEL_REWARD_BACKBONE "
                             "(e.g. the SmolLM2 folder); default: the trainer's default backbone (MiniLM)")
    parser.add_argument("--scorer-batch", type=int, default=16,
                        help="with --scorer: its --batch (64 by default in production). The count over a side's few "
                             "seconds moves in steps of this; MiniLM scored as many answers/s in batches of 8 as of 64")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    scorer = ScorerBeside(work, args.model, args.scorer_batch) if args.scorer else None
    port = free_port()
    with tansu_process(port, work / "tansu.log"):
        bootstrap = f"127.0.0.1:{port}"
        topic = f"bench.{uuid.uuid4().hex[:8]}"
        producer = EventProducer(WorkerSettings(_env_file=None, kafka_bootstrap_servers=bootstrap,  # type: ignore[call-arg]
                                                kafka_topic=topic), linger_ms=20)
        batch = make_events(args.events, app_id=1)
        asyncio.run(producer.send_many(batch))
        producer.close()
        measure("sqlite", bootstrap, topic, len(batch), lambda name: f"sqlite:///{work / name}.db", args.runs,
                scorer)
        if args.postgres:
            import sqlalchemy as sa

            admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
            created: list[str] = []

            def pg(name: str) -> str:
                database = f"flywheel_bench_{name}_{uuid.uuid4().hex[:8]}"
                with admin.connect() as conn:
                    conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
                created.append(database)
                return admin.url.set(database=database).render_as_string(hide_password=False)

            try:
                measure("postgresql", bootstrap, topic, len(batch), pg, args.runs, scorer)
            finally:  # a bench leaves the server as it found it, even when a run fails
                with admin.connect() as conn:
                    for database in created:
                        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
