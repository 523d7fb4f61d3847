"""What DPO and KTO rounds share: the champion as the starting policy, its reference view, scoring, progress.

The round continues from the champion (its LoRA adapter, loaded trainable, or a fresh LoRA
on the base model when the champion is the base), so each version is the previous one plus
what new feedback taught. The training reference is the base model by default (``hold_near``);
a continued champion's adapter is also kept as a frozen copy, and ``champion_view`` switches a
trained policy back to it, so the gates compare candidate and champion inside one model in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.model_versions import adapter_artifact_path, download_adapter
from trainer.config import TrainConfig
from trainer.pairs import PreferencePair
from trainer.registry import Registry

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    Policy = PreTrainedModel | PeftModel

CHAMPION = "champion"
"""The adapter name of the frozen copy of the champion the gates compare with (``keep_champion_adapter``)."""

ProgressFn = Callable[[str, int, int], None]
"""progress(stage, done, total): called as long work advances; the CLI draws one bar per stage name."""


@dataclass(frozen=True)
class PairMetrics:
    """How well a policy orders held-out pairs, weighted by each pair's feedback weight.

    ``accuracy``: share of pairs where logπ(chosen) > logπ(rejected).
    ``mean_margin``: mean of logπ(chosen) - logπ(rejected), sequence log-probs in nats.
    ``correct``: per pair, in order, whether it was ordered right (for paired tests between policies).
    """

    accuracy: float
    mean_margin: float
    pairs: int
    correct: tuple[bool, ...] = ()


def chat_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool
) -> list[int]:
    encoded: Any = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


LOGP_BATCH = 16  # sequences per forward pass when scoring answers


def _completion_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]], answer: str, max_length: int
) -> tuple[list[int], int]:
    """Token ids of prompt and answer, tokenized the way TRL's DPOTrainer does, and where the answer starts."""
    prompt_ids = chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = chat_ids(tokenizer, [*prompt, {"role": "assistant", "content": answer}], add_generation_prompt=False)
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b), len(prompt_ids))
    return full_ids[:max_length], start


def right_padded(sequences: list[list[int]], pad: int, device: Any) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of ``sequences`` padded on the right: a causal model's outputs for the
    real tokens are then the same as for each sequence alone."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    return ids.to(device), mask.to(device)


def completion_logps(
    model: Policy, tokenizer: PreTrainedTokenizerBase, items: list[tuple[list[dict[str, str]], str]], max_length: int,
    batch_size: int = LOGP_BATCH,
) -> list[float]:
    """Sequence log-prob of each ``(prompt, answer)``'s answer, in right-padded batches.

    On the CPU one forward pass per answer costs several times more in call overhead than the
    arithmetic; right padding leaves a causal model's log-probs of the real tokens unchanged.
    """
    import torch

    encoded = [_completion_ids(tokenizer, prompt, answer, max_length) for prompt, answer in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logps = [0.0] * len(items)
    scorable = [i for i, (ids, start) in enumerate(encoded) if 0 < start < len(ids)]
    for begin in range(0, len(scorable), batch_size):
        rows = scorable[begin:begin + batch_size]
        ids, mask = right_padded([encoded[i][0] for i in rows], pad, model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        token_logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        for row, i in enumerate(rows):
            full_ids, start = encoded[i]
            logps[i] = float(token_logps[row, start - 1 : len(full_ids) - 1].sum())
    return logps


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
    right: list[bool] = []
    for begin in range(0, len(pairs), LOGP_BATCH // 2):
        chunk = pairs[begin:begin + LOGP_BATCH // 2]
        logps = completion_logps(model, tokenizer, [(p.prompt, answer) for p in chunk
                                                    for answer in (p.chosen, p.rejected)], max_length)
        for n, pair in enumerate(chunk):
            margin = logps[2 * n] - logps[2 * n + 1]
            right.append(margin > 0)
            correct += pair.weight * (margin > 0)
            margin_sum += pair.weight * margin
            total_weight += pair.weight
        if progress:
            progress(stage, begin + len(chunk), len(pairs))
    model.train(was_training)
    if total_weight == 0:
        return PairMetrics(accuracy=math.nan, mean_margin=math.nan, pairs=0)
    return PairMetrics(accuracy=correct / total_weight, mean_margin=margin_sum / total_weight, pairs=len(pairs),
                       correct=tuple(right))


def report_progress(trainer: Any, progress: ProgressFn | None, stage: str = "train") -> Any:
    """Report ``trainer``'s optimizer steps to ``progress`` as ``stage`` and return it.

    With a progress function the bars are the caller's: transformers then prints one dict per
    logged step instead of its tqdm bar, which would scroll through them, so that printer goes.
    """
    if progress is None:
        return trainer
    from transformers import PrinterCallback, TrainerCallback

    report = progress

    class _Progress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            report(stage, state.global_step, state.max_steps)

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_Progress())
    return trainer


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


def load_champion_policy(
    base: Path, config: TrainConfig, registry: Registry, workdir: Path
) -> tuple[Any, PreTrainedTokenizerBase, Any]:
    """(model, tokenizer, peft_config): the champion, ready to train.

    A champion with an adapter comes back as a trainable PeftModel with a frozen copy of that
    adapter for the gates, and ``peft_config`` None. The base champion comes back bare with a
    fresh LoraConfig for TRL to apply.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    champion = registry.champion()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32  # CPU bf16 matmuls are slow
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    if adapter_artifact_path(champion) is not None:
        adapter_dir = download_adapter(registry.client, champion, workdir / f"champion-v{champion.version}")
        policy = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
        return keep_champion_adapter(policy), tokenizer, None
    return model, tokenizer, lora_config(config)


def keep_champion_adapter(model: Any) -> Any:
    """Add a frozen copy of a continued champion's adapter as ``champion``, for the gates.

    The gates compare the candidate with the champion it continues, whatever the training
    reference (``TrainConfig.reference``: the base by default, which DPO, KTO, RLOO and GRPO then
    see with adapters off; ORPO has none). A bare base model (a fresh LoRA to come) needs nothing:
    with adapters off it is the champion. The copy is not trained (PEFT trains the active adapter
    only) and is not saved (``_log_candidate`` saves ``default`` alone).
    """
    if not hasattr(model, "peft_config") or CHAMPION in model.peft_config:
        return model
    model.add_adapter(CHAMPION, model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".default." in name:
            model.get_parameter(name.replace(".default.", f".{CHAMPION}.")).data.copy_(param.data)
    model.set_adapter("default")
    return model


def hold_near(model: Any, config: TrainConfig) -> None:
    """Make the trainer's reference policy the one ``config.reference`` names.

    TRL, handed a continued adapter, keeps a frozen copy of it as ``ref`` and holds the policy
    near that: each round is then regularised towards its parent, and rounds add their drift up
    (three DPO rounds took SmolLM2 from readable to made-up words while every round's own KL
    stayed under the gate, docs/demo.md). Without ``ref``, TRL's reference is the model with
    adapters off, the base: the KL-regularised objective of RLHF, one anchor for every round.
    """
    if config.reference == "base" and hasattr(model, "peft_config") and "ref" in model.peft_config:
        model.delete_adapter("ref")
        model.set_adapter("default")


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def common_args(config: TrainConfig, output_dir: Path, quiet: bool) -> dict[str, Any]:
    """TrainingArguments every policy trainer's config shares.

    Each trainer adds its own loss settings: its ``beta`` means something else in each, and the
    offline trainers' ``max_length`` has no counterpart in RLOO/GRPO, which cap prompt and answer apart.
    """
    import torch

    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "gradient_checkpointing": config.gradient_checkpointing,
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "dataloader_pin_memory": torch.cuda.is_available(),
        "seed": config.seed,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": quiet,
    }


@contextmanager
def candidate_view(policy: Any) -> Iterator[Any]:
    """The trained policy itself: its ``default`` adapter (TRL may have added a frozen ``ref`` beside it)."""
    policy.set_adapter("default")
    yield policy


def champion_is_base(policy: Any) -> bool:
    """Whether the round started from the base model: then the champion and the base view are one model."""
    return CHAMPION not in policy.peft_config


@contextmanager
def champion_view(policy: Any) -> Iterator[Any]:
    """The same model answering as the champion it continues: its frozen copy, or the base if that is the champion."""
    from trl.trainer.utils import use_adapter

    with use_adapter(policy, adapter_name=None if champion_is_base(policy) else CHAMPION):
        yield policy


def base_view(policy: Any) -> AbstractContextManager[Any]:
    """The same model answering as the base: PEFT's own switch, every adapter off."""
    context: AbstractContextManager[Any] = policy.disable_adapter()
    return context
