"""ORPO, RLOO and GRPO rounds end to end on a tiny model: same snapshot, gates and registry as DPO and KTO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from registry.model_versions import CHALLENGER
from tests.trainer.conftest import Store
from tests.trainer.test_trainer_loop import artifact, fast_config, lenient, seed_consistent_pairs
from trainer.config import TrainConfig, TrainerSettings
from trainer.registry import Registry
from trainer.round import GATE_REPORT_ARTIFACT, train_once

GATES = ["win_rate", "heldout_accuracy", "kl", "kl_base", "verbosity", "format", "non_words", "canaries"]


def rl_config(algorithm: str, **overrides: object) -> TrainConfig:
    """A few steps of online RL with short answers: generation dominates a step on the CPU."""
    values: dict[str, object] = {
        "algorithm": algorithm, "max_steps": 3, "num_generations": 2, "batch_size": 4,
        "rl_max_completion_length": 12, "length_penalty_start": 8, "reward_ensemble": 2,
    }
    return fast_config(**(values | overrides))


@pytest.mark.parametrize(
    ("config", "step_metric"),
    [(fast_config(algorithm="orpo", max_steps=3), "step_reward_margin"),
     (rl_config("rloo"), "step_kl"),
     (rl_config("grpo"), "step_kl")],
    ids=["orpo", "rloo", "grpo"],
)
def test_each_algorithm_runs_a_round_and_registers_a_gated_version(
    settings: TrainerSettings, store: Store, factory: sessionmaker[Session], tmp_path: Path, config: TrainConfig,
    step_metric: str,
) -> None:
    seed_consistent_pairs(store, 20)

    result = train_once(lenient(settings), config)

    assert result.status == "trained", result.message
    assert (result.algorithm, result.version, result.parent_version) == (config.algorithm, "2", "1")
    assert result.gates and [g.name for g in result.gates.gates] == GATES
    assert result.gates.passed and result.challenger, result.gates
    assert result.snapshot and result.snapshot.algorithm == config.algorithm
    assert result.message.startswith(f"version 2 ({config.algorithm.upper()} from v1)")
    registry = Registry(settings, factory)
    assert registry.version("2").tags["algorithm"] == config.algorithm
    assert str(registry.alias_version(CHALLENGER).version) == "2"  # type: ignore[union-attr]
    report = json.loads(artifact(registry, result.run_id, GATE_REPORT_ARTIFACT, tmp_path).read_text())
    assert [g["name"] for g in report["gates"]] == GATES and report["passed"] is True
    assert result.run_id
    run = registry.client.get_run(result.run_id)
    assert run.data.params["algorithm"] == config.algorithm
    assert run.data.metrics["train_steps"] == 3
    assert step_metric in run.data.metrics  # the method's own per-step curve reached MLflow
    assert run.data.metrics["gate_kl"] > 0  # the candidate moved off the champion


def test_online_rl_config_is_refused_when_it_cannot_work() -> None:
    with pytest.raises(ValidationError, match="reward_model must be on"):
        TrainConfig(algorithm="rloo", reward_model=False)
    with pytest.raises(ValidationError, match="multiple of num_generations"):
        TrainConfig(algorithm="grpo", batch_size=4, num_generations=3)
    with pytest.raises(ValidationError, match="length_penalty_start"):
        TrainConfig(algorithm="grpo", rl_max_completion_length=32, length_penalty_start=32)
    with pytest.raises(ValidationError, match="rl_beta"):
        TrainConfig(algorithm="rloo", rl_beta=0)
    TrainConfig(algorithm="grpo", rl_max_completion_length=32, length_penalty_start=32, length_penalty_weight=0)
    TrainConfig(algorithm="dpo", reward_model=False, num_generations=3)  # RL settings bind RL rounds only


def test_orpo_and_grpo_continue_a_champion_that_has_an_adapter(
    settings: TrainerSettings, store: Store, factory: sessionmaker[Session],
) -> None:
    """From the second round on the champion is an adapter: ORPO and GRPO train it further, not a fresh LoRA."""
    registry = Registry(settings, factory)
    parent = "1"
    for round_, config in enumerate([fast_config(max_steps=2, reward_model=False, gates=False),
                                     fast_config(algorithm="orpo", max_steps=2),
                                     rl_config("grpo", max_steps=2)]):
        seed_consistent_pairs(store, 20)  # each round learns from the votes cast since its champion's
        result = train_once(lenient(settings), config)
        assert result.status == "trained" and result.parent_version == parent, result.message
        assert result.version and registry.version(result.version).tags["adapter"] == "adapter", round_
        registry.promote(result.version, actor="ops")
        parent = result.version
    assert parent == "4"
