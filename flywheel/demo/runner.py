"""``flywheel demo``: rounds of the whole loop on the embedded stack, judged by the users' own taste.

Each round: the scenario's accounts (honest users with a hidden taste, noisy users, bots,
a campaign, slow attackers) chat with the live champion through the gateway and vote; the
worker filters; one training round runs (``trainer.round.train_once``, the same call as
``flywheel train``); the gates decide; a candidate that passes is promoted through the
admin endpoint ops use (audited as ``app:demo``) while chats keep flowing, and the next
round's users talk to it. Every version is then judged on held-out prompts by the
simulator's taste (``flywheel.demo.evaluation``), never by the system's own reward model.
The filters and the trainer are not told the taste: it reaches them only through votes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from feedback.apps import create_app
from feedback.db.session import make_engine, session_factory, transaction
from feedback.filters import FilterSettings
from flywheel.demo.evaluation import PROMPT_SET, Evaluator, VersionAnswers
from flywheel.demo.machine_feedback import MachineFeedback
from flywheel.demo.page import write_report
from flywheel.demo.schema import DemoOptions, DemoReport, Evaluation, GateLine, RoundRecord, SwapRecord, VersionRecord
from flywheel.simulation.report import Report, measure
from flywheel.simulation.runner import run_scenario
from flywheel.simulation.scenario import CampaignGroup, Scenario
from flywheel.simulation.tastes import make_taste
from flywheel.simulation.truth import TruthWriter, read_truth
from flywheel.simulation.users import campaign_prompts, load_prompts
from flywheel.stack.services import start_services
from flywheel.stack.supervise import free_port
from registry.promotion import Promotion
from serving.settings import ServingSettings
from trainer.config import TrainConfig, TrainerSettings
from trainer.round import TrainResult, train_once

DEMO_ACTOR_APP = "demo"  # promotions are audited as app:demo, the admin app the demo creates
SWAP_PROBES = 4  # chats kept in flight through the gateway while it switches versions
# Not a canary's prompt: the probes' answers are stored like any, and --constitution revises stored answers.
SWAP_PROBE_PROMPT = "Name one colour of the rainbow."


class Display:
    """One progress view for the whole run: the round and phase on top, then a bar per stage."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.rounds = rounds
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self._phase = self.progress.add_task("starting", total=None)
        self._stages: dict[str, TaskID] = {}

    def phase(self, round_: int, phase: str, champion: str) -> None:
        self.progress.update(self._phase, description=f"round {round_}/{self.rounds} · {phase} · champion "
                                                      f"v{champion}")

    def stage(self, stage: str, done: int, total: int) -> None:
        """A ``trainer.policy.ProgressFn``: one bar per stage name (votes, reward-model, train, …)."""
        if stage not in self._stages:
            self._stages[stage] = self.progress.add_task(f"  {stage}", total=total)
        self.progress.update(self._stages[stage], completed=done, total=total)

    def new_round(self) -> None:
        for task in self._stages.values():
            self.progress.remove_task(task)
        self._stages = {}

    def note(self, text: str) -> None:
        self.progress.console.print(text)


def demo_settings(data_dir: Path, model: Path | None) -> ServingSettings:
    """A stack of the demo's own: its data dir and free ports, so it never meets a running `flywheel up`."""
    return ServingSettings(
        data_dir=data_dir, base_model=model, port=free_port(), engine_port=free_port(),
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", engine_kv_cache_gb=1, engine_max_model_len=1024,
        swap_poll_seconds=1.0,
    )


def trainer_settings(settings: ServingSettings) -> TrainerSettings:
    shared = {name: getattr(settings, name) for name in ("data_dir", "database_url", "mlflow_tracking_uri",
                                                          "registered_model", "base_model")}
    return TrainerSettings(**shared)


class DemoRun:
    """One demo: the stack, the apps, the evaluator, and the report it fills round by round."""

    def __init__(self, options: DemoOptions, scenario: Scenario, out: Path, console: Console,
                 train_config: TrainConfig, compare: DemoReport | None = None,
                 compare_label: str | None = None) -> None:
        self.options = options
        self.scenario = scenario
        self.out = out
        self.console = console
        self.train_config = train_config
        self.display = Display(console, options.rounds)
        self.phrases = [g.phrase for g in scenario.groups if isinstance(g, CampaignGroup)]
        self.report = DemoReport(options=options, phrases=self.phrases, started_at=datetime.now(UTC),
                                 startup_seconds=0.0, versions=[], rounds=[], compare=compare,
                                 compare_label=compare_label)

    def run(self) -> DemoReport:
        self.out.mkdir(parents=True, exist_ok=True)
        settings = demo_settings(self.out / "stack", Path(self.options.model))
        worker_env = {"FLYWHEEL_SIMULATION": "1", "FLYWHEEL_FILTER_TIME_SCALE": str(self.options.time_scale),
                      "FLYWHEEL_FILTER_ENABLED": str(self.options.filters).lower()}
        started = time.perf_counter()
        with ExitStack() as stack, self.display.progress:
            start_services(stack, settings, self.console, worker_args=["--metrics-port", "0"],
                           worker_env=worker_env)
            self.report.startup_seconds = time.perf_counter() - started
            sessions = session_factory(make_engine(settings.resolved_database_url))
            with transaction(sessions) as session:
                _, users_key = create_app(session, "demo-users")
                _, admin_key = create_app(session, DEMO_ACTOR_APP, admin=True)
            registry = Promotion(settings.resolved_mlflow_uri, settings.registered_model, sessions)
            rounds = _Rounds(self, settings, registry, users_key, admin_key)
            rounds.evaluate_base()
            for number in range(1, self.options.rounds + 1):
                rounds.play(number)
                self.save()
        self.report.finished_at = datetime.now(UTC)
        self.save()
        return self.report

    def save(self) -> None:
        write_report(self.report, self.out)


class _Rounds:
    """The per-round work of a running demo."""

    def __init__(self, demo: DemoRun, settings: ServingSettings, registry: Promotion, users_key: str,
                 admin_key: str) -> None:
        self.demo = demo
        self.settings = settings
        self.registry = registry
        self.users_key = users_key
        self.admin_key = admin_key
        self.gateway = f"http://{settings.host}:{settings.port}"
        self.sessions = registry.factory
        options = demo.options
        prompts = load_prompts(PROMPT_SET)[: options.eval_prompts]
        self.evaluator = Evaluator(settings, registry, make_taste(options.taste, demo.scenario.preference.max_words),
                                   prompts, options.eval_samples, demo.scenario.chat, demo.phrases, options.seed,
                                   campaign_prompts(demo.scenario))
        self.base_model = Path(options.model)
        self.base_answers: VersionAnswers | None = None
        self.mlflow_experiment = ""

    @property
    def champion(self) -> str:
        return str(self.registry.champion().version)

    def evaluate_base(self) -> None:
        self.demo.display.phase(0, "evaluating the base model", self.champion)
        answers, evaluation = self.evaluator.evaluate(self.champion, None, self.base_model)
        self.evaluator.save(self.demo.out / "answers", answers)
        self.base_answers = answers
        self.demo.report.versions.append(VersionRecord(
            version=answers.version, round=0, parent=None, algorithm=None, gates_passed=None, promoted=True,
            run_id=None, run_url=None, evaluation=evaluation))
        self.demo.display.note(f"base v{answers.version}: liked {evaluation.liked.value:.2f}, "
                               f"{evaluation.mean_words:.0f} words, format {evaluation.format_share:.2f}, "
                               f"non-words {evaluation.non_words:.3f}")

    def play(self, number: int) -> None:
        demo, display = self.demo, self.demo.display
        display.new_round()
        before = self.champion
        phases: dict[str, float] = {}
        round_dir = demo.out / f"round-{number}"
        round_dir.mkdir(parents=True, exist_ok=True)
        truth = round_dir / "truth.jsonl"

        display.phase(number, "users chat and vote", before)
        clock = time.perf_counter()
        plan = demo.scenario.model_copy(update={"visit": number})
        with TruthWriter(truth) as writer:
            votes = display.stage
            summary = asyncio.run(run_scenario(
                plan, self.gateway, self.users_key, writer, model=self.settings.public_model,
                on_event=_counter(lambda done: votes("votes", done, plan.planned_events))))
        phases["traffic"] = time.perf_counter() - clock

        display.phase(number, "the worker filters", before)
        clock = time.perf_counter()
        settle = FilterSettings().search_interval_s + 2 if demo.options.filters else 1.0
        filtered = measure(truth, self.sessions, wait_seconds=180, settle_seconds=settle)
        phases["settle"] = time.perf_counter() - clock
        clock = time.perf_counter()  # after the users' votes are stored: the judge takes only the pairs they left
        machine = self._machine_feedback(number, before)
        if machine:
            phases["machine_feedback"] = time.perf_counter() - clock

        display.phase(number, "training", before)
        clock = time.perf_counter()
        result = train_once(trainer_settings(self.settings), demo.train_config, display.stage)
        phases["train"] = time.perf_counter() - clock
        display.note(f"round {number}: {result.message}")

        candidate = result.version
        if candidate is not None:
            display.phase(number, f"evaluating v{candidate}", before)
            clock = time.perf_counter()
            assert self.base_answers is not None
            answers, evaluation = self.evaluator.evaluate(candidate, self.base_answers, self.base_model)
            self.evaluator.save(demo.out / "answers", answers)
            phases["evaluate"] = time.perf_counter() - clock
            demo.report.versions.append(self._version_record(number, result, evaluation))
            assert evaluation.win_rate is not None
            display.note(f"v{candidate}: win rate vs base {evaluation.win_rate.value:.2f} "
                         f"[{evaluation.win_rate.low:.2f}, {evaluation.win_rate.high:.2f}], liked "
                         f"{evaluation.liked.value:.2f}, KL {evaluation.kl_to_base:.3f}, "
                         f"non-words {evaluation.non_words:.3f}")

        swap, served_at = None, None
        if candidate is not None and result.challenger:
            display.phase(number, f"promoting v{candidate} under load", before)
            clock = time.perf_counter()
            swap, served_at = asyncio.run(self._promote_under_load(candidate, number))
            phases["promote"] = time.perf_counter() - clock
            demo.report.version(candidate).promoted = True
        first_vote = min((r.sent_at for r in read_truth(truth)), default=None)
        record = _round_record(
            number, before, self.champion, result, summary.sent.total(), summary.failed.total(), filtered, phases,
            (served_at - first_vote).total_seconds() if served_at and first_vote else None, swap)
        record.answers_unvoted = summary.unvoted.total()
        record.machine_feedback = machine
        record.snapshot_sources = result.snapshot.events_by_source if result.snapshot else {}
        demo.report.rounds.append(record)

    def _machine_feedback(self, number: int, champion: str) -> dict[str, dict[str, int]]:
        """The round's AI verdicts and constitutional revisions, when the options ask for them (stored before
        training)."""
        demo, display = self.demo, self.demo.display
        machine = MachineFeedback(self.settings, self.sessions, display.stage)
        found: dict[str, dict[str, int]] = {}
        if demo.options.ai_labels:
            display.phase(number, "the base model judges the pairs nobody voted on", champion)
            found["ai"] = dict(machine.label_unvoted())
        if demo.options.constitution:
            display.phase(number, "the base model revises answers against the principles", champion)
            found["constitution"] = dict(machine.revise(demo.options.constitution))
        for kind, outcomes in found.items():
            display.note(f"round {number}: {kind} " + ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items())))
        return found

    def _version_record(self, number: int, result: TrainResult, evaluation: Evaluation) -> VersionRecord:
        assert result.version is not None
        gates = [GateLine(name=g.name, status=g.status, value=None if g.value != g.value else g.value,
                          threshold=g.threshold, detail=g.detail) for g in (result.gates.gates if result.gates else [])]
        return VersionRecord(
            version=result.version, round=number, parent=result.parent_version, algorithm=result.algorithm,
            gates_passed=result.challenger, gates=gates, promoted=False, run_id=result.run_id,
            run_url=self._run_url(result.run_id), evaluation=evaluation)

    def _run_url(self, run_id: str | None) -> str | None:
        """The run in an MLflow UI started on the demo's store (the report says how)."""
        if run_id is None:
            return None
        experiment = self.registry.client.get_run(run_id).info.experiment_id
        return f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}"

    async def _promote_under_load(self, version: str, number: int) -> tuple[SwapRecord, datetime]:
        """Promote through the admin endpoint while chats flow; count them, and time the first from ``version``."""
        counts: Counter[str] = Counter()
        failed = 0
        first_new: datetime | None = None
        stop = asyncio.Event()
        users = {"Authorization": f"Bearer {self.users_key}"}
        async with httpx.AsyncClient(base_url=self.gateway, timeout=120) as http:

            async def chatter(probe: int) -> None:
                nonlocal failed, first_new
                while not stop.is_set():
                    body = {"model": self.settings.public_model, "max_tokens": 16, "user": f"demo-swap-{probe}",
                            "messages": [{"role": "user", "content": SWAP_PROBE_PROMPT}]}
                    try:
                        response = await http.post("/v1/chat/completions", json=body, headers=users)
                    except httpx.HTTPError:
                        failed += 1
                        continue
                    if not response.is_success:
                        failed += 1
                        continue
                    served = str(response.json()["flywheel"]["model_version"])
                    counts[served] += 1
                    if served == version and first_new is None:
                        first_new = datetime.now(UTC)
                        stop.set()

            probes = [asyncio.create_task(chatter(i)) for i in range(SWAP_PROBES)]
            await asyncio.sleep(1.0)
            promoted = await http.post(f"/admin/models/{version}/promote",
                                       headers={"Authorization": f"Bearer {self.admin_key}"},
                                       json={"reason": f"flywheel demo round {number}: passed every gate"})
            promoted.raise_for_status()
            try:
                await asyncio.wait_for(stop.wait(), timeout=120)
            finally:
                stop.set()
                await asyncio.gather(*probes)
        if first_new is None:
            raise RuntimeError(f"the gateway never served v{version} after its promotion")
        return SwapRecord(requests=counts.total() + failed, failed=failed, by_version=dict(counts)), first_new


def _counter(report: Callable[[int], None]) -> Callable[[], None]:
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        report(done)

    return advance


def _round_record(
    number: int, before: str, after: str, result: TrainResult, sent: int, failed: int, filtered: Report,
    phases: dict[str, float], latency: float | None, swap: SwapRecord | None,
) -> RoundRecord:
    reasons: Counter[str] = Counter()
    for figures in filtered.by_type.values():
        reasons.update(figures.reasons)
    by_type = filtered.by_type.values()
    return RoundRecord(
        round=number, champion_before=before, candidate=result.version, promoted=after != before,
        champion_after=after, train_status=result.status, train_message=result.message, votes_sent=sent,
        votes_failed=failed, accepted=sum(f.accepted for f in by_type),
        quarantined=sum(f.quarantined for f in by_type), pending=filtered.pending,
        quarantined_by_reason=dict(reasons),
        quarantined_share_by_user_type={t: f.share_quarantined for t, f in filtered.by_type.items()},
        adversarial_recall=filtered.adversarial_recall, honest_false_positive=filtered.honest_false_positive,
        phases=phases, train_stages=result.seconds, train_cpu_seconds=result.cpu_seconds, loop_latency_seconds=latency,
        swap=swap,
    )
