"""One training round, read as its stages: snapshot -> reward model -> policy -> judge -> register.

``train_once`` takes the trainer lock and runs the stages in order; each is a function given
only what it needs, and each is timed the same way (``StageClock``: ``TrainResult.seconds`` and
the MLflow metrics ``seconds_<stage>``).

1. **snapshot**: the accepted feedback (with ``new_feedback_only``, the votes cast after the
   champion's own snapshot) is split per prompt into train and held-out examples and frozen;
   a new MLflow run records the round's parameters and the snapshot, and the Great Expectations
   suite checks it. A snapshot that fails is "rejected": nothing is trained.
2. **reward model** (when configured): trained on the training pairs, its held-out accuracy
   measured, its scores published for the worker's filters, the model logged for ``flywheel scorer``.
3. **policy**: DPO, KTO or ORPO from the votes, or RLOO or GRPO from the reward model, with LoRA,
   continuing the champion's adapter.
4. **judge**: held-out preference accuracy of champion and candidate, then the gates.
5. **register**: adapter, gate report, plots and metrics logged; the version registered, and
   marked challenger only if it passed every gate.

Nothing reaches the registry until the very end: a crash anywhere before leaves at most a
FAILED MLflow run, never a version or an alias move. A candidate that fails a gate is still
registered (with ``gates_passed=false`` and its ``gate_report.json``), so ops can see why; only
a candidate that passes every gate becomes ``challenger``. Being challenger promotes nothing.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mlflow.entities import Metric, Param, RunStatus
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.session import make_engine, session_factory
from registry.model_versions import ADAPTER_ARTIFACT_PATH, ADAPTER_TAG
from trainer.base_model import ensure_base_model
from trainer.config import ConfigError, TrainConfig, TrainerSettings
from trainer.drift_budget import DriftChecks, keep_within_drift
from trainer.gates import GateReport, collect, load_canaries
from trainer.gates import evaluate as evaluate_gates
from trainer.pairs import FeedbackExamples, PreferencePair, load_examples, split_pairs
from trainer.policy import (
    PairMetrics,
    ProgressFn,
    candidate_view,
    champion_view,
    evaluate_pairs,
    hold_near,
    load_champion_policy,
)
from trainer.registry import BASE_MODEL_TAG, Registry
from trainer.reward import RewardEvaluation, RewardModel, default_backbone, evaluate_reward_model, train_reward_model
from trainer.reward_artifact import log_reward_model
from trainer.reward_scores import publish_reward_scores
from trainer.schedule import (
    SNAPSHOT_ARTIFACT,
    SNAPSHOT_HASH_TAG,
    SNAPSHOT_WINDOW_END_PARAM,
    LockBusy,
    champion_learnt_until,
    new_feedback_count,
    training_lock,
)
from trainer.snapshot import Snapshot, SnapshotValidation, freeze, quarantined_among, validate

log = logging.getLogger(__name__)

VALIDATION_ARTIFACT = "snapshot_validation.json"
GATE_REPORT_ARTIFACT = "gate_report.json"
PLOTS_ARTIFACT_PATH = "plots"
Method = Literal["dpo", "kto", "orpo", "rloo", "grpo"]  # what a round trains with; TrainConfig.algorithm: or "auto"


@dataclass
class TrainResult:
    status: Literal["skipped", "rejected", "trained"]
    message: str
    version: str | None = None
    parent_version: str | None = None
    challenger: bool = False
    run_id: str | None = None
    algorithm: Method | None = None
    champion_metrics: PairMetrics | None = None
    candidate_metrics: PairMetrics | None = None
    snapshot: Snapshot | None = None
    validation: SnapshotValidation | None = None
    reward: RewardEvaluation | None = None
    gates: GateReport | None = None
    drift: DriftChecks | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


class StageClock:
    """Wall and CPU seconds per stage of one round, measured one way for all of them.

    CPU seconds are this process's, every thread included (torch's too): what the round costs on a shared
    machine, which wall time hides when the cores are busy with something else.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started
            self.cpu_seconds[name] = time.process_time() - cpu


@dataclass(frozen=True)
class Examples:
    """What the round learns from: the policy's examples (rated answers for KTO, pairs for every other method;
    RLOO and GRPO take their prompts) and the preference pairs the reward model and the gates use, each split per
    prompt into train and held-out."""

    method: Method
    train: list[Any]
    heldout: list[Any]
    pairs_train: list[PreferencePair]
    pairs_heldout: list[PreferencePair]


@dataclass(frozen=True)
class RewardStage:
    model: RewardModel | None
    evaluation: RewardEvaluation | None
    scored: int


@dataclass(frozen=True)
class Judgement:
    champion: PairMetrics
    candidate: PairMetrics
    gates: GateReport | None


def choose_algorithm(config: TrainConfig, examples: FeedbackExamples) -> Method:
    """DPO when most of the feedback's events already form pairs, KTO when most are lone ratings.

    DPO learns only from prompts with both a preferred and a rejected answer; KTO learns from
    every rated answer. So ``auto`` counts the events behind the pairs against all usable
    events: at least half paired -> DPO, otherwise KTO (which would otherwise drop most of it).
    ORPO, RLOO and GRPO are chosen by name only: they cost or risk more (see docs/training.md).
    """
    if config.algorithm != "auto":
        return config.algorithm
    paired = {e for p in examples.pairs for e in p.event_ids}
    rated = {e for r in examples.rated for e in r.event_ids}
    return "dpo" if 2 * len(paired) >= len(paired | rated) and paired else "kto"


def train_once(
    settings: TrainerSettings,
    config: TrainConfig,
    progress: ProgressFn | None = None,
    min_new_feedback: int = 0,
) -> TrainResult:
    """Run one round under the trainer lock. "skipped" (with why) when the feedback cannot support one.

    ``min_new_feedback`` > 0 (the scheduler's setting) also skips when fewer accepted events
    arrived since the newest trained version's snapshot.
    """
    try:
        with training_lock(settings):
            return _round(settings, config, progress, min_new_feedback)
    except LockBusy as busy:
        return TrainResult(status="skipped", message=f"{busy}; this cycle is skipped")


def _round(
    settings: TrainerSettings, config: TrainConfig, progress: ProgressFn | None, min_new_feedback: int
) -> TrainResult:
    factory = session_factory(make_engine(settings.resolved_database_url))
    registry = Registry(settings, factory)
    if min_new_feedback > 0:
        new = new_feedback_count(factory, registry)
        if new < min_new_feedback:
            return TrainResult(
                status="skipped",
                message=f"only {new} new accepted feedback events since the last trained version; a cycle needs "
                f"{min_new_feedback} (FLYWHEEL_TRAIN_MIN_NEW_FEEDBACK)",
            )
    clock = StageClock()
    with clock.stage("snapshot"):
        examples = _select_examples(factory, registry, config)
        if isinstance(examples, TrainResult):
            return examples
        frozen = freeze(factory, examples.method, examples.train, examples.heldout)
        base = ensure_base_model(settings)  # before the bootstrap, so version 1 describes a real folder
        parent = registry.ensure_bootstrap()
        run_id = registry.client.create_run(
            registry.experiment_id(),
            run_name=f"{examples.method}-v{parent}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
            tags={"flywheel.parent_version": parent, "flywheel.snapshot_hash": frozen.content_hash},
        ).info.run_id
    try:
        with clock.stage("snapshot_check"):
            validation = _log_and_check_snapshot(settings, config, registry, run_id, parent, frozen, factory)
        if not validation.passed:
            registry.client.set_tag(run_id, "flywheel.outcome", "snapshot_rejected")
            registry.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
            return TrainResult(
                status="rejected", algorithm=examples.method, run_id=run_id, parent_version=parent,
                snapshot=frozen, validation=validation,
                message="the snapshot failed its checks, nothing was trained: " + "; ".join(validation.failures()),
            )
        result = _train_and_judge(settings, base, config, registry, run_id, parent, examples, clock, progress)
        result.snapshot, result.validation = frozen, validation
    except BaseException:
        registry.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    registry.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    if result.status == "skipped":
        log.info(result.message)
        return result
    with clock.stage("register"):
        return _register(settings, registry, result)


def _select_examples(
    factory: sessionmaker[Session], registry: Registry, config: TrainConfig
) -> Examples | TrainResult:
    """The round's examples, or a "skipped" result saying why there are not enough to train and judge on."""
    since = champion_learnt_until(registry) if config.new_feedback_only else None
    feedback = load_examples(factory, config.max_pairs_per_prompt, since)
    method = choose_algorithm(config, feedback)
    if method == "kto" and config.batch_size < 2:  # only "auto" gets here: an explicit "kto" is refused earlier
        raise ConfigError("the feedback is mostly lone ratings, so the round chose KTO, which estimates its KL term "
                          "across a batch: batch_size must be >= 2 (got 1)")
    data: list[Any] = list(feedback.rated if method == "kto" else feedback.pairs)
    kind = "rated answers" if method == "kto" else "preference pairs"
    if len(data) < config.min_pairs:
        return TrainResult(
            status="skipped",
            algorithm=method,
            message=f"only {len(data)} {kind} in the store"
            + (f" from votes after the champion's snapshot ({since:%Y-%m-%d %H:%M:%S})" if since else "")
            + f"; {method.upper()} training needs at least {config.min_pairs} (TrainConfig.min_pairs). "
            "Collect more pairwise votes or thumbs.",
        )
    train, heldout = split_pairs(data, config.heldout_fraction)
    if not train or not heldout:
        return TrainResult(
            status="skipped",
            algorithm=method,
            message=f"all {len(data)} {kind} fell into one split (train {len(train)}, held-out {len(heldout)}): "
            "the split is per prompt, so more distinct prompts are needed before a candidate can be judged.",
        )
    pairs_train, pairs_heldout = (
        split_pairs(feedback.pairs, config.heldout_fraction) if method == "kto" else (train, heldout)
    )
    return Examples(method, train, heldout, pairs_train, pairs_heldout)


def _log_and_check_snapshot(
    settings: TrainerSettings,
    config: TrainConfig,
    registry: Registry,
    run_id: str,
    parent: str,
    frozen: Snapshot,
    factory: sessionmaker[Session],
) -> SnapshotValidation:
    """Log the run's parameters and the snapshot, then run the snapshot suite and log its result."""
    params = {f"config.{k}": v for k, v in config.model_dump().items()}
    params |= {
        "parent_version": parent,
        "base_model": str(settings.resolved_base_model),
        "algorithm": frozen.algorithm,
        "train_examples": frozen.train_examples,
        "heldout_examples": frozen.heldout_examples,
        "snapshot.events": len(frozen.event_ids),
        "snapshot.window_start": frozen.window_start,
        SNAPSHOT_WINDOW_END_PARAM: frozen.window_end,
        **{f"snapshot.source.{k}": v for k, v in frozen.counts_by_source.items()},
        **{f"snapshot.label.{k}": v for k, v in frozen.counts_by_label.items()},
    }
    registry.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    validation = validate(
        frozen,
        quarantined_among(factory, frozen.event_ids),
        config.snapshot_min_rows,
        config.snapshot_min_label_share,
    )
    _log_json(registry, run_id, {SNAPSHOT_ARTIFACT: frozen.to_dict(), VALIDATION_ARTIFACT: validation.to_dict()})
    return validation


def _train_and_judge(
    settings: TrainerSettings,
    base: Path,
    config: TrainConfig,
    registry: Registry,
    run_id: str,
    parent: str,
    examples: Examples,
    clock: StageClock,
    progress: ProgressFn | None,
) -> TrainResult:
    """Stages 2 to 4 and the logging of their output, in one working folder removed afterwards."""
    import torch

    torch.manual_seed(config.seed)
    output_root = config.resolved_output_dir(settings)
    output_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_root, prefix=f"run-{run_id}-") as tmp:
        workdir = Path(tmp)
        with clock.stage("reward_model"):
            reward = _reward_stage(settings, config, examples, registry, run_id, workdir, progress)
        with clock.stage("policy"):
            drift_limit = config.drift_budget * settings.gate_max_kl_base
            trainer, tokenizer, train_output, drift = _policy_stage(base, config, registry, examples, reward, workdir,
                                                                    progress, drift_limit)
        if drift is not None and drift.stopped_at is not None and drift.kept_step == 0:
            return _budget_spent(registry, run_id, parent, examples, drift, settings)
        clock.seconds["per_step"] = clock.seconds["policy"] / max(train_output.global_step, 1)
        policy: Any = trainer.model  # a PeftModel: TRL applied the LoRA or we loaded the champion's
        with clock.stage("judge"):
            judgement = _judge_stage(policy, tokenizer, examples, reward, settings, config, progress)
        with clock.stage("log"):
            _log_candidate(registry, run_id, policy, tokenizer, trainer, reward, judgement, settings, workdir)
    metrics = {
        "train_loss": float(train_output.training_loss),
        "train_steps": float(train_output.global_step),
        "heldout_pairs": float(judgement.candidate.pairs),
        "heldout_accuracy": judgement.candidate.accuracy,
        "heldout_margin": judgement.candidate.mean_margin,
        "champion_heldout_accuracy": judgement.champion.accuracy,
        "champion_heldout_margin": judgement.champion.mean_margin,
        **(
            {
                "reward_heldout_accuracy": reward.evaluation.heldout_accuracy,
                "reward_uncertainty": reward.evaluation.uncertainty,
                "reward_heldout_pairs": float(reward.evaluation.pairs),
                "reward_scored_answers": float(reward.scored),
            }
            if reward.evaluation
            else {}
        ),
        **(judgement.gates.metrics() if judgement.gates else {}),
        **(drift.metrics() if drift else {}),
        **{f"seconds_{k}": v for k, v in clock.seconds.items()},
        **{f"cpu_seconds_{k}": v for k, v in clock.cpu_seconds.items()},
    }
    _log_metrics(registry, run_id, metrics, trainer.state.log_history)
    return TrainResult(
        status="trained",
        message="",
        parent_version=parent,
        run_id=run_id,
        algorithm=examples.method,
        champion_metrics=judgement.champion,
        candidate_metrics=judgement.candidate,
        reward=reward.evaluation,
        gates=judgement.gates,
        drift=drift,
        seconds=clock.seconds,
        cpu_seconds=clock.cpu_seconds,
    )


def _budget_spent(
    registry: Registry, run_id: str, parent: str, examples: Examples, drift: DriftChecks, settings: TrainerSettings
) -> TrainResult:
    """The round's first drift check was already over the budget: the candidate would be its champion, unchanged.

    Registering that copy would offer ops a "new" version that is the live one; the run is kept,
    tagged, and the round says what would let the next one move.
    """
    registry.client.set_tag(run_id, "flywheel.outcome", "drift_budget_spent")
    _log_metrics(registry, run_id, drift.metrics(), [])
    return TrainResult(
        status="skipped", algorithm=examples.method, run_id=run_id, parent_version=parent, drift=drift,
        message=f"{drift.describe()}, the weights v{parent} began with: nothing new to register. Either the first "
        "steps moved too far (a lower TrainConfig.learning_rate, or a check every fewer drift_check_steps, lets a "
        "round stop inside the budget) or the champion already sits at it (a larger FLYWHEEL_GATE_MAX_KL_BASE "
        f"({settings.gate_max_kl_base:g}) or TrainConfig.drift_budget lets it move further from the base model).",
    )


def _reward_stage(
    settings: TrainerSettings,
    config: TrainConfig,
    examples: Examples,
    registry: Registry,
    run_id: str,
    workdir: Path,
    progress: ProgressFn | None,
) -> RewardStage:
    """Train and measure the reward model; publish its scores and log it for the scorer process."""
    if not config.reward_model or not examples.pairs_train:
        return RewardStage(None, None, 0)
    backbone = settings.reward_backbone or default_backbone()
    model = train_reward_model(backbone, examples.pairs_train, config, workdir, progress)
    evaluation = evaluate_reward_model(model, examples.pairs_heldout)
    scored = 0
    if config.reward_score_limit:
        scored = publish_reward_scores(model, evaluation.heldout_accuracy, registry.factory, run_id,
                                       config.reward_score_limit, progress)
        # `flywheel scorer` goes on scoring new answers with the model whose scores the table now holds
        log_reward_model(registry.client, run_id, model)
    return RewardStage(model, evaluation, scored)


def _policy_stage(
    base: Path, config: TrainConfig, registry: Registry, examples: Examples, reward: RewardStage, workdir: Path,
    progress: ProgressFn | None, drift_limit: float,
) -> tuple[Any, Any, Any, DriftChecks | None]:
    """The champion's policy trained one round further, within the drift budget (``trainer.drift_budget``) when
    checks are on; returns the TRL trainer, the tokenizer, its output and what the drift checks measured."""
    from trainer.dpo import dpo_trainer
    from trainer.kto import kto_trainer
    from trainer.online_rl import online_rl_trainer
    from trainer.orpo import orpo_trainer

    model, tokenizer, lora = load_champion_policy(base, config, registry, workdir)
    output_dir = workdir / "checkpoints"
    method = examples.method
    if method == "rloo" or method == "grpo":
        assert reward.model is not None  # TrainConfig refuses online RL without a reward model; pairs exist here
        trainer = online_rl_trainer(method, model, tokenizer, lora, examples.train, reward.model, config, output_dir,
                                    progress)
    else:
        builders: dict[str, Callable[..., Any]] = {"dpo": dpo_trainer, "kto": kto_trainer, "orpo": orpo_trainer}
        build = builders[method]
        trainer = build(model, tokenizer, lora, examples.train, config, output_dir, progress)
    hold_near(trainer.model, config)  # after construction: TRL adds its own reference copy there
    drift = None
    if config.drift_check_steps:
        prompts = list({x.prompt_hash: x.prompt for x in examples.train}.values())[: config.drift_check_prompts]
        drift = keep_within_drift(trainer, tokenizer, prompts, drift_limit, config.drift_check_steps,
                                  config.gate_max_new_tokens)
    return trainer, tokenizer, trainer.train(), drift


def _judge_stage(
    policy: Any, tokenizer: Any, examples: Examples, reward: RewardStage, settings: TrainerSettings,
    config: TrainConfig, progress: ProgressFn | None,
) -> Judgement:
    """Held-out preference accuracy of champion and candidate, then (when configured) the gates."""
    with champion_view(policy):
        champion = evaluate_pairs(policy, tokenizer, examples.pairs_heldout, config.max_length, progress,
                                  "evaluate-champion")
    with candidate_view(policy):
        candidate = evaluate_pairs(policy, tokenizer, examples.pairs_heldout, config.max_length, progress,
                                   "evaluate-candidate")
    if not config.gates:
        return Judgement(champion, candidate, None)
    prompts = list({x.prompt_hash: x.prompt for x in examples.heldout}.values())[: config.gate_prompts]
    inputs = collect(policy, tokenizer, prompts, load_canaries(config.canaries), champion, candidate, config,
                     progress, examples.pairs_train + examples.pairs_heldout)
    accuracy = reward.evaluation.heldout_accuracy if reward.evaluation else None
    return Judgement(champion, candidate, evaluate_gates(inputs, reward.model, settings, config, accuracy))


def _log_candidate(
    registry: Registry, run_id: str, policy: Any, tokenizer: Any, trainer: Any, reward: RewardStage,
    judgement: Judgement, settings: TrainerSettings, workdir: Path,
) -> None:
    """The adapter (what the registry will point at), the gate report and the plots, into the run."""
    from trainer.plots import save_plots

    client = registry.client
    with candidate_view(policy):
        adapter_dir = workdir / "adapter"
        policy.save_pretrained(str(adapter_dir), selected_adapters=["default"])
    tokenizer.save_pretrained(str(adapter_dir))  # vLLM reads the adapter's tokenizer when present
    client.log_artifacts(run_id, str(adapter_dir), ADAPTER_ARTIFACT_PATH)
    report = judgement.gates
    if report is not None:
        _log_json(registry, run_id, {GATE_REPORT_ARTIFACT: report.to_dict()})
    win_rate = next((g.value for g in report.gates if g.name == "win_rate"), None) if report else None
    plots = save_plots(
        workdir / PLOTS_ARTIFACT_PATH,
        list(trainer.state.log_history),
        reward.model.log_history if reward.model else [],
        win_rate if win_rate is not None and not math.isnan(win_rate) else None,
        report.win_rate_ci if report else None,
        settings.gate_win_rate_min_lower,
    )
    client.log_artifacts(run_id, str(plots[0].parent), PLOTS_ARTIFACT_PATH)


def _log_json(registry: Registry, run_id: str, files: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            path = Path(tmp) / name
            path.write_text(json.dumps(content, indent=2, default=str))
            registry.client.log_artifact(run_id, str(path))


STEP_METRICS = (  # (TRL log key, MLflow metric): DPO/KTO/ORPO log margins, RLOO/GRPO the reward and the KL
    ("loss", "step_loss"), ("rewards/margins", "step_reward_margin"), ("reward", "step_reward"), ("kl", "step_kl"),
)


def _log_metrics(registry: Registry, run_id: str, metrics: dict[str, float], history: list[dict[str, Any]]) -> None:
    """Summary metrics, plus the per-step curves (``STEP_METRICS``) so MLflow draws them too."""
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, 0) for k, v in metrics.items() if not math.isnan(v)]
    for entry in history:
        step = int(entry.get("step", 0))
        for source, name in STEP_METRICS:
            if source in entry:
                batch.append(Metric(name, float(entry[source]), now, step))
    registry.client.log_batch(run_id, metrics=batch)


def _register(settings: TrainerSettings, registry: Registry, result: TrainResult) -> TrainResult:
    """Register the finished run as a version and, if it passed every gate, mark it challenger.

    Last step on purpose; if marking fails, the version is deleted again so a crash never
    leaves a registered version the round did not finish with.
    """
    assert result.run_id and result.parent_version and result.snapshot and result.algorithm
    assert result.candidate_metrics and result.champion_metrics
    passed = result.gates is not None and result.gates.passed
    tags = {
        ADAPTER_TAG: ADAPTER_ARTIFACT_PATH,
        BASE_MODEL_TAG: str(settings.resolved_base_model),
        "run_id": result.run_id,
        "parent_version": result.parent_version,
        SNAPSHOT_HASH_TAG: result.snapshot.content_hash,
        "algorithm": result.algorithm,
        "gates_passed": str(passed).lower(),
    }
    version = registry.register_candidate(result.run_id, ADAPTER_ARTIFACT_PATH, tags)
    try:
        if passed:
            registry.set_challenger(version, reason=f"passed every gate against champion v{result.parent_version}")
    except BaseException:
        registry.delete_version(version)
        raise
    result.version, result.challenger = version, passed
    cand, champ = result.candidate_metrics, result.champion_metrics
    verdict = (
        "passed every gate: marked challenger"
        if passed
        else "gates were off: not marked challenger"
        if result.gates is None
        else f"failed gates {', '.join(result.gates.failed())}: registered, not challenger"
    )
    result.message = (
        f"version {version} ({result.algorithm.upper()} from v{result.parent_version}): held-out accuracy "
        f"{cand.accuracy:.3f} vs champion {champ.accuracy:.3f} on {cand.pairs} pairs; {verdict}"
        + (f" ({result.drift.describe()})" if result.drift and result.drift.stopped_at is not None else "")
    )
    log.info(result.message)
    return result
