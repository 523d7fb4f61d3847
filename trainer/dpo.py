"""One training round: feedback pairs -> DPO on the champion -> a registered candidate version.

The round continues from the champion (its LoRA adapter, loaded trainable, or a fresh LoRA
on the base model when the champion is the base), so each version is the previous one plus
what new feedback taught. TRL's DPOTrainer then uses the champion itself as the reference
policy: the candidate is pulled toward the feedback but kept near what users are served.

Nothing reaches the registry until the very end: a crash anywhere before leaves at most a
FAILED MLflow run, never a version or an alias move.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlflow.entities import Metric, Param, RunStatus

from feedback.db.session import make_engine, session_factory
from feedback.model_versions import ADAPTER_ARTIFACT_PATH, ADAPTER_TAG, adapter_artifact_path, download_adapter
from trainer.base_model import ensure_base_model
from trainer.config import TrainConfig, TrainerSettings
from trainer.pairs import PreferencePair, Snapshot, load_pairs, snapshot, split_pairs
from trainer.registry import BASE_MODEL_TAG, Registry

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    Policy = PreTrainedModel | PeftModel

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
"""progress(stage, done, total): called as long work advances (stages: evaluate-champion, train, evaluate-candidate)."""

SNAPSHOT_ARTIFACT = "snapshot.json"


@dataclass(frozen=True)
class PairMetrics:
    """How well a policy orders held-out pairs, weighted by each pair's feedback weight.

    ``accuracy``: share of pairs where logπ(chosen) > logπ(rejected).
    ``mean_margin``: mean of logπ(chosen) - logπ(rejected), sequence log-probs in nats.
    """

    accuracy: float
    mean_margin: float
    pairs: int


@dataclass
class TrainResult:
    status: Literal["skipped", "trained"]
    message: str
    version: str | None = None
    parent_version: str | None = None
    challenger: bool = False
    run_id: str | None = None
    champion_metrics: PairMetrics | None = None
    candidate_metrics: PairMetrics | None = None
    snapshot: Snapshot | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def beats(candidate: PairMetrics, champion: PairMetrics) -> bool:
    """Whether a candidate earns the ``challenger`` alias.

    It must order more held-out pairs right than the champion (higher weighted accuracy),
    or as many and with a larger mean margin. Accuracy comes first because it is what users
    feel: which of two answers the model prefers. The margin only breaks ties, which are
    common on the small held-out sets of early rounds. Being challenger promotes nothing:
    it marks the version for the gates and for ops.
    """
    if candidate.pairs == 0:
        return False
    if not math.isclose(candidate.accuracy, champion.accuracy, abs_tol=1e-9):
        return candidate.accuracy > champion.accuracy
    return candidate.mean_margin > champion.mean_margin


def _chat_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool
) -> list[int]:
    encoded: Any = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def _completion_logp(
    model: Policy, tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]], answer: str, max_length: int
) -> float:
    """Sequence log-prob of ``answer`` after ``prompt``, tokenized the way TRL's DPOTrainer does."""
    import torch

    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _chat_ids(tokenizer, [*prompt, {"role": "assistant", "content": answer}], add_generation_prompt=False)
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b), len(prompt_ids))
    full_ids = full_ids[:max_length]
    if start >= len(full_ids) or start == 0:
        return 0.0
    ids = torch.tensor([full_ids], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).squeeze(1)
    return float(token_logps[start - 1 :].sum())


def evaluate_pairs(
    model: Policy,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[PreferencePair],
    max_length: int,
    progress: ProgressFn | None = None,
    stage: str = "evaluate",
) -> PairMetrics:
    """Weighted preference accuracy and mean log-prob margin of ``model`` on ``pairs``.

    Plain policy log-probs, not DPO's implicit reward: the implicit reward is relative to a
    reference, and the champion and the candidate must be scored on one scale.
    """
    was_training = model.training
    model.eval()
    correct = margin_sum = total_weight = 0.0
    for done, pair in enumerate(pairs, start=1):
        margin = _completion_logp(model, tokenizer, pair.prompt, pair.chosen, max_length) - _completion_logp(
            model, tokenizer, pair.prompt, pair.rejected, max_length
        )
        correct += pair.weight * (margin > 0)
        margin_sum += pair.weight * margin
        total_weight += pair.weight
        if progress:
            progress(stage, done, len(pairs))
    model.train(was_training)
    if total_weight == 0:
        return PairMetrics(accuracy=0.0, mean_margin=0.0, pairs=0)
    return PairMetrics(accuracy=correct / total_weight, mean_margin=margin_sum / total_weight, pairs=len(pairs))


def _progress_callback(progress: ProgressFn) -> Any:
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress("train", state.global_step, state.max_steps)

    return _Progress()


@contextmanager
def rich_progress() -> Iterator[ProgressFn]:
    """A ProgressFn that draws one rich progress bar per stage, for the CLI."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield report


def _load_champion_policy(
    base: Path, config: TrainConfig, registry: Registry, workdir: Path
) -> tuple[Any, PreTrainedTokenizerBase, Any]:
    """(model, tokenizer, peft_config): the champion, ready to train.

    A champion with an adapter comes back as a trainable PeftModel and ``peft_config`` None
    (TRL then keeps a frozen copy of that adapter as the reference). The base champion comes
    back bare with a fresh LoraConfig for TRL to apply (reference: the base, adapters off).
    """
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    champion = registry.champion()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32  # CPU bf16 matmuls are slow
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    if adapter_artifact_path(champion) is not None:
        adapter_dir = download_adapter(registry.client, champion, workdir / f"champion-v{champion.version}")
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True), tokenizer, None
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    return model, tokenizer, lora


def _dpo_args(config: TrainConfig, output_dir: Path, quiet: bool) -> Any:
    import torch
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        beta=config.beta,
        max_length=config.max_length,
        gradient_checkpointing=config.gradient_checkpointing,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=config.seed,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=quiet,
    )


def train_once(settings: TrainerSettings, config: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Run one round. Returns status "skipped" (with why) when the feedback cannot support one."""
    config.validate()
    factory = session_factory(make_engine(settings.resolved_database_url))
    pairs = load_pairs(factory, config.max_pairs_per_prompt)
    if len(pairs) < config.min_pairs:
        return TrainResult(
            status="skipped",
            message=f"only {len(pairs)} preference pairs in the store; training needs at least "
            f"{config.min_pairs} (TrainConfig.min_pairs). Collect more pairwise votes or thumbs on "
            "answers to the same prompt.",
        )
    train, heldout = split_pairs(pairs, config.heldout_fraction)
    if not train or not heldout:
        return TrainResult(
            status="skipped",
            message=f"all {len(pairs)} pairs fell into one split (train {len(train)}, held-out {len(heldout)}): "
            "the split is per prompt, so more distinct prompts are needed before a candidate can be judged.",
        )
    data = snapshot(train, heldout)
    base = ensure_base_model(settings)  # before the bootstrap, so version 1 describes a real folder
    registry = Registry(settings, factory)
    parent = registry.ensure_bootstrap()
    run = registry.client.create_run(
        registry.experiment_id(),
        run_name=f"dpo-v{parent}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={"flywheel.parent_version": parent, "flywheel.snapshot_hash": data.content_hash},
    )
    run_id = run.info.run_id
    try:
        result = _train_and_log(settings, base, config, registry, run_id, parent, train, heldout, data, progress)
    except BaseException:
        registry.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    registry.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return _register(settings, registry, result)


def _train_and_log(
    settings: TrainerSettings,
    base: Path,
    config: TrainConfig,
    registry: Registry,
    run_id: str,
    parent: str,
    train: list[PreferencePair],
    heldout: list[PreferencePair],
    data: Snapshot,
    progress: ProgressFn | None,
) -> TrainResult:
    import torch
    from datasets import Dataset
    from trl import DPOTrainer

    client = registry.client
    seconds: dict[str, float] = {}
    params = {f"config.{k}": v for k, v in asdict(config).items()}
    params |= {"parent_version": parent, "base_model": str(settings.resolved_base_model), "train_pairs": len(train)}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    torch.manual_seed(config.seed)
    output_root = config.resolved_output_dir(settings)
    output_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_root, prefix=f"run-{run_id}-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        model, tokenizer, lora = _load_champion_policy(base, config, registry, workdir)
        seconds["load"] = time.perf_counter() - started

        started = time.perf_counter()
        champion_metrics = evaluate_pairs(model, tokenizer, heldout, config.max_length, progress, "evaluate-champion")
        seconds["evaluate_champion"] = time.perf_counter() - started

        trainer = DPOTrainer(
            model=model,
            args=_dpo_args(config, workdir / "checkpoints", quiet=progress is not None),
            train_dataset=Dataset.from_list([p.to_trl() for p in train]),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[_progress_callback(progress)] if progress else None,
        )
        started = time.perf_counter()
        train_output = trainer.train()
        seconds["train"] = time.perf_counter() - started
        seconds["per_step"] = seconds["train"] / max(train_output.global_step, 1)

        policy: Any = trainer.model  # a PeftModel: TRL applied the LoRA or we loaded the champion's
        policy.set_adapter("default")  # TRL may have added a frozen "ref" copy beside it
        started = time.perf_counter()
        candidate_metrics = evaluate_pairs(
            policy, tokenizer, heldout, config.max_length, progress, "evaluate-candidate"
        )
        seconds["evaluate_candidate"] = time.perf_counter() - started

        adapter_dir = workdir / "adapter"
        policy.save_pretrained(str(adapter_dir), selected_adapters=["default"])
        tokenizer.save_pretrained(str(adapter_dir))  # vLLM reads the adapter's tokenizer when present
        client.log_artifacts(run_id, str(adapter_dir), ADAPTER_ARTIFACT_PATH)
        snapshot_file = workdir / SNAPSHOT_ARTIFACT
        snapshot_file.write_text(json.dumps(data.to_dict(), indent=2))
        client.log_artifact(run_id, str(snapshot_file))

    metrics = {
        "train_loss": float(train_output.training_loss),
        "train_steps": float(train_output.global_step),
        "heldout_pairs": float(candidate_metrics.pairs),
        "heldout_accuracy": candidate_metrics.accuracy,
        "heldout_margin": candidate_metrics.mean_margin,
        "champion_heldout_accuracy": champion_metrics.accuracy,
        "champion_heldout_margin": champion_metrics.mean_margin,
        **{f"pairs_{source}": float(n) for source, n in data.counts_by_source.items()},
        **{f"seconds_{k}": v for k, v in seconds.items()},
    }
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    return TrainResult(
        status="trained",
        message="",
        parent_version=parent,
        run_id=run_id,
        champion_metrics=champion_metrics,
        candidate_metrics=candidate_metrics,
        snapshot=data,
        seconds=seconds,
    )


def _register(settings: TrainerSettings, registry: Registry, result: TrainResult) -> TrainResult:
    """Register the finished run as a version and, if it beats the champion, mark it challenger.

    Last step on purpose; if marking fails, the version is deleted again so a crash never
    leaves a registered version the round did not finish with.
    """
    assert result.run_id and result.parent_version and result.snapshot
    assert result.candidate_metrics and result.champion_metrics
    won = beats(result.candidate_metrics, result.champion_metrics)
    tags = {
        ADAPTER_TAG: ADAPTER_ARTIFACT_PATH,
        BASE_MODEL_TAG: str(settings.resolved_base_model),
        "run_id": result.run_id,
        "parent_version": result.parent_version,
        "snapshot_hash": result.snapshot.content_hash,
        "beats_champion": str(won).lower(),
    }
    version = registry.register_candidate(result.run_id, ADAPTER_ARTIFACT_PATH, tags)
    try:
        if won:
            registry.set_challenger(version, reason=f"beats champion v{result.parent_version} on held-out pairs")
    except BaseException:
        registry.delete_version(version)
        raise
    cand, champ = result.candidate_metrics, result.champion_metrics
    result.version, result.challenger = version, won
    result.message = (
        f"version {version} (from v{result.parent_version}): held-out accuracy {cand.accuracy:.3f} vs champion "
        f"{champ.accuracy:.3f}, margin {cand.mean_margin:.3f} vs {champ.mean_margin:.3f} on {cand.pairs} pairs; "
        + ("marked challenger" if won else "not better than the champion, so not marked challenger")
    )
    log.info(result.message)
    return result
