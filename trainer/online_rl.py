"""Online RL from the round's reward model: TRL's RLOOTrainer or GRPOTrainer on the champion, LoRA.

The classic third stage of RLHF: the policy answers the snapshot's training prompts
(``num_generations`` samples each), the round's reward model scores every answer, and each
answer is pushed up or down by how it fared against the other answers to its prompt. A KL
term to the reference (``rl_beta``; the base by default, ``TrainConfig.reference``): RLOO subtracts it
from the reward (the closest to PPO with a KL penalty; PPO itself is gone from TRL 1.16), GRPO
adds it to the loss.

A policy optimised against a learnt reward finds what the reward model over-rates, so the
reward (``rl_reward_functions``) is more than the reward model's score:
- with an ensemble (``reward_ensemble`` > 1), the members' mean minus
  ``reward_uncertainty_penalty`` standard deviations: answers the members disagree on, off
  the data they learnt from, earn less. One member has no spread: the reward is its score.
- TRL's soft overlong punishment (``length_penalty_weight``): nothing up to
  ``length_penalty_start`` tokens, then down to -1 at ``rl_max_completion_length``, against
  the drift to long answers that a reward model read on sentence pairs tends to like;
- TRL's repetition penalty (``repetition_penalty_weight``): minus the share of repeated token
  n-grams, against the loops a small policy falls into.
TRL sums them with those weights and logs each one's mean per step.

The snapshot's feedback reaches the policy through the reward model (trained on the round's
pairs, with their feedback weights); the prompts are the training pairs' distinct prompts,
never the held-out ones the gates use. Generation is HF ``generate`` on the policy in
process: TRL's vLLM weight sync needs CUDA, and the serving engine is busy serving.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

from trainer.config import ConfigError, TrainConfig
from trainer.pairs import PreferencePair
from trainer.policy import ProgressFn, chat_ids, common_args, report_progress
from trainer.reward import RewardModel

RLMethod = Literal["rloo", "grpo"]


class RewardModelReward:
    """The round's reward model as a TRL reward function: ensemble mean minus ``uncertainty_penalty`` std devs.

    A callable class with a ``__name__``, as TRL's own reward functions are: TRL names the
    logged per-function reward after it.
    """

    __name__ = "reward_model"

    def __init__(self, model: RewardModel, uncertainty_penalty: float) -> None:
        self.model = model
        self.uncertainty_penalty = uncertainty_penalty

    def __call__(self, prompts: list[list[dict[str, str]]], completions: list[Any], **kwargs: Any) -> list[float]:
        answers = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        scores = self.model.score(prompts, answers)
        return [float(r) for r in scores.mean(axis=0) - self.uncertainty_penalty * scores.std(axis=0)]


RewardFunction = Callable[..., list[float]]


def rl_reward_functions(reward_model: RewardModel, config: TrainConfig) -> tuple[list[RewardFunction], list[float]]:
    """(reward functions, their weights) for TRL: the reward model, then each penalty whose weight is not 0."""
    from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment

    functions: list[RewardFunction] = [RewardModelReward(reward_model, config.reward_uncertainty_penalty)]
    weights = [1.0]
    if config.length_penalty_weight > 0:
        functions.append(get_soft_overlong_punishment(
            config.rl_max_completion_length, config.rl_max_completion_length - config.length_penalty_start))
        weights.append(config.length_penalty_weight)
    if config.repetition_penalty_weight > 0:
        functions.append(get_repetition_penalty_reward(config.repetition_ngram, max_penalty=-1.0))
        weights.append(config.repetition_penalty_weight)
    return functions, weights


def rl_prompts(train: list[PreferencePair], tokenizer: Any, max_prompt_length: int) -> list[list[dict[str, str]]]:
    """The training pairs' distinct prompts, in order, without those longer than ``max_prompt_length`` tokens.

    TRL 1.16's RLOO and GRPO do not truncate prompts, and a cut conversation would be a prompt
    nobody sent; the prompts left out still taught the reward model.
    """
    prompts = {p.prompt_hash: p.prompt for p in train}
    return [p for p in prompts.values() if len(chat_ids(tokenizer, p, add_generation_prompt=True)) <= max_prompt_length]


def generation_args(config: TrainConfig) -> dict[str, Any]:
    """The trainer config's sampling arguments for ``config.rl_generation``.

    TRL's vLLM modes sync the policy's weights into vLLM over CUDA, so on a CPU machine the answers come from HF
    ``generate``; on a GPU job colocate mode (vLLM in the trainer process, sharing the GPU) samples several times
    faster without a server to run beside the trainer.
    """
    import torch

    cuda = torch.cuda.is_available()
    if config.rl_generation == "vllm" and not cuda:
        raise ConfigError("rl_generation=vllm is TRL's vLLM colocate mode, whose weight sync needs a CUDA GPU, and "
                          "none is visible: use rl_generation=hf (or auto, which picks hf here)")
    if config.rl_generation == "hf" or not cuda:
        return {"use_vllm": False}
    return {"use_vllm": True, "vllm_mode": "colocate"}


def online_rl_trainer(
    method: RLMethod,
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    train: list[PreferencePair],
    reward_model: RewardModel,
    config: TrainConfig,
    output_dir: Path,
    progress: ProgressFn | None = None,
) -> Any:
    """A ready RLOOTrainer or GRPOTrainer on the training prompts, scored by ``reward_model``; ``.train()`` runs it."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    prompts = rl_prompts(train, tokenizer, config.rl_max_prompt_length)
    if not prompts:
        raise ConfigError(f"every training prompt is longer than rl_max_prompt_length ({config.rl_max_prompt_length} "
                         "tokens): raise it")
    functions, weights = rl_reward_functions(reward_model, config)
    config_class, trainer_class = (RLOOConfig, RLOOTrainer) if method == "rloo" else (GRPOConfig, GRPOTrainer)
    trainer_class = cast(Any, trainer_class)  # the two take the same arguments, each its own config class
    args = config_class(
        **common_args(config, output_dir, quiet=progress is not None),
        beta=config.rl_beta,
        num_generations=config.num_generations,
        max_completion_length=config.rl_max_completion_length,
        reward_weights=weights,
        **generation_args(config),
    )
    trainer = trainer_class(
        model=model,
        reward_funcs=functions,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    return report_progress(trainer, progress)
