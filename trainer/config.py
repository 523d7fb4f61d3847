"""What one training round does (``TrainConfig``) and where the trainer finds things (``TrainerSettings``).

The config lives beside the trainer, as in TRL: a plain dataclass that a CLI, a test or a
cron job fills in. ``TrainerSettings`` holds only what differs between deployments and so
comes from ``FLYWHEEL_`` environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class TrainConfig:
    """One DPO round with LoRA.

    Defaults suit SmolLM2-135M on a few CPU cores; a GPU job raises ``batch_size`` and
    ``max_length``. When the champion already has an adapter, training continues that
    adapter, so its own rank and target modules win over ``lora_*`` here.
    """

    min_pairs: int = 16
    heldout_fraction: float = 0.2
    max_pairs_per_prompt: int = 8
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 5e-5
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
