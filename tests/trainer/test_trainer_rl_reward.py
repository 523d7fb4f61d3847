"""The online-RL reward (the reward model's ensemble mean minus its spread, plus the length and repetition penalties)
and how its answers are sampled."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trainer.config import ConfigError, RLGeneration, TrainConfig
from trainer.online_rl import generation_args, rl_reward_functions
from trainer.reward import RewardModel

PROMPT = [{"role": "user", "content": "Tell me about cats."}]


class FixedScores(RewardModel):
    """A reward model whose members give fixed scores per answer, so the arithmetic can be checked exactly."""

    def __init__(self, scores: dict[str, list[float]]) -> None:
        super().__init__(members=[None] * len(next(iter(scores.values()))), tokenizer=None, max_length=0)
        self.scores = scores

    def score(self, prompts: list[list[dict[str, str]]], answers: list[str], batch_size: int = 32) -> np.ndarray:
        return np.array([self.scores[a] for a in answers], dtype=float).T


def total(model: RewardModel, config: TrainConfig, answers: list[str], ids: list[list[int]]) -> list[float]:
    """What TRL adds up: each reward function's output times its weight."""
    functions, weights = rl_reward_functions(model, config)
    kwargs: dict[str, Any] = {
        "prompts": [PROMPT] * len(answers),
        "completions": [[{"role": "assistant", "content": a}] for a in answers],
        "completion_ids": ids,
    }
    columns = [f(**kwargs) for f in functions]
    return [sum(w * c[i] for w, c in zip(weights, columns, strict=True)) for i in range(len(answers))]


def test_the_ensemble_spread_lowers_the_reward_of_answers_the_members_disagree_on() -> None:
    model = FixedScores({"agreed": [1.0, 1.0], "disputed": [3.0, -1.0]})  # same mean 1, std 0 and 2
    plain = TrainConfig(length_penalty_weight=0, repetition_penalty_weight=0, reward_uncertainty_penalty=0.0)
    cautious = plain.model_copy(update={"reward_uncertainty_penalty": 0.5})

    assert total(model, plain, ["agreed", "disputed"], [[1], [2]]) == pytest.approx([1.0, 1.0])
    assert total(model, cautious, ["agreed", "disputed"], [[1], [2]]) == pytest.approx([1.0, 0.0])  # 1 - 0.5 * 2


def test_one_reward_model_gives_its_own_score() -> None:
    model = FixedScores({"x": [0.7]})
    config = TrainConfig(length_penalty_weight=0, repetition_penalty_weight=0, reward_uncertainty_penalty=3.0)
    assert total(model, config, ["x"], [[1]]) == pytest.approx([0.7])


def test_the_length_penalty_starts_at_its_token_count_and_reaches_its_weight_at_the_cap() -> None:
    model = FixedScores({"x": [0.0]})
    config = TrainConfig(rl_max_completion_length=20, length_penalty_start=10, length_penalty_weight=2.0,
                         repetition_penalty_weight=0)
    lengths = [5, 10, 15, 20]
    rewards = total(model, config, ["x"] * 4, [list(range(n)) for n in lengths])  # no repeats
    assert rewards == pytest.approx([0.0, 0.0, -1.0, -2.0])  # linear from 10 tokens to -weight at 20


def test_the_repetition_penalty_charges_loops_not_varied_answers() -> None:
    model = FixedScores({"x": [0.0]})
    config = TrainConfig(length_penalty_weight=0, repetition_penalty_weight=0.5, repetition_ngram=2)
    varied, loop = list(range(9)), [7, 8] * 4 + [7]  # 8 bigrams: all new / 2 distinct
    assert total(model, config, ["x", "x"], [varied, loop]) == pytest.approx([0.0, -0.5 * (1 - 2 / 8)])


def test_a_penalty_at_weight_zero_is_left_out() -> None:
    functions, weights = rl_reward_functions(FixedScores({"x": [0.0]}), TrainConfig(length_penalty_weight=0))
    assert [f.__name__ for f in functions] == ["reward_model", "repetition_penalty_reward"] and weights == [1.0, 1.0]


@pytest.mark.parametrize(("setting", "cuda", "expected"), [
    ("auto", False, {"use_vllm": False}),
    ("auto", True, {"use_vllm": True, "vllm_mode": "colocate"}),
    ("hf", True, {"use_vllm": False}),
    ("vllm", True, {"use_vllm": True, "vllm_mode": "colocate"}),
])
def test_answers_are_sampled_by_vllm_colocated_on_a_gpu_and_by_hf_generate_elsewhere(
    setting: RLGeneration, cuda: bool, expected: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert generation_args(TrainConfig(algorithm="grpo", rl_generation=setting)) == expected


def test_vllm_sampling_without_a_gpu_is_refused_with_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU.*rl_generation=hf"):
        generation_args(TrainConfig(algorithm="rloo", rl_generation="vllm"))
