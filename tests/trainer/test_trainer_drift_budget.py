"""The drift budget stops training at the last check within it and puts those weights back (tiny model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tests.trainer.conftest import Store
from tests.trainer.test_trainer_loop import fast_config, lenient, seed_consistent_pairs
from tests.trainer.test_trainer_reference import PAIRS
from trainer.config import TrainConfig, TrainerSettings
from trainer.dpo import dpo_trainer
from trainer.drift_budget import keep_within_drift
from trainer.policy import lora_config
from trainer.registry import Registry
from trainer.round import train_once

PROMPTS = [pair.prompt for pair in PAIRS]


def adapter_weights(model: Any) -> dict[str, Any]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def budgeted(tiny_model: Path, tmp_path: Path, limit: float, every: int) -> tuple[Any, Any, dict[str, Any]]:
    """Four DPO steps under a drift budget of ``limit``; the trainer, its record and the weights it began with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    config = TrainConfig(batch_size=2, max_steps=4, learning_rate=5e-3, reward_model=False)
    trainer = dpo_trainer(AutoModelForCausalLM.from_pretrained(str(tiny_model)), tokenizer, lora_config(config),
                          PAIRS, config, tmp_path)
    start = adapter_weights(trainer.model)
    checks = keep_within_drift(trainer, tokenizer, PROMPTS, limit, every, max_new_tokens=8)
    trainer.train()
    return trainer, checks, start


def test_a_check_over_the_budget_stops_training_and_restores_the_last_weights_within_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    import torch

    trainer, checks, start = budgeted(tiny_model, tmp_path, limit=1e-12, every=1)
    assert trainer.state.global_step == 1 and checks.stopped_at == 1 and checks.kept_step == 0
    assert len(checks.measured) == 1 and checks.measured[0][1] > 1e-12
    after = adapter_weights(trainer.model)
    assert all(torch.equal(after[name], start[name]) for name in start)  # the weights the round began with
    assert "kept the weights of step 0" in checks.describe()


def test_within_the_budget_training_runs_to_its_end_and_is_checked_there(tiny_model: Path, tmp_path: Path) -> None:
    import torch

    trainer, checks, start = budgeted(tiny_model, tmp_path, limit=1e9, every=3)
    assert trainer.state.global_step == 4 and checks.stopped_at is None
    assert [step for step, _ in checks.measured] == [3, 4] and checks.kept_step == 4  # step 4: the end's check
    after = adapter_weights(trainer.model)
    assert not all(torch.equal(after[name], start[name]) for name in start)
    assert checks.describe() == "" and checks.metrics()["drift_stopped"] == 0.0


def test_a_round_whose_first_check_is_over_the_budget_registers_nothing(
    settings: TrainerSettings, factory: sessionmaker[Session], store: Store
) -> None:
    """Its candidate would be the champion itself: the run is kept and tagged, no version is offered to ops."""
    seed_consistent_pairs(store, 24)
    result = train_once(lenient(settings, gate_max_kl_base=1e-12), fast_config(drift_check_steps=2,
                                                                                reward_model=False))
    assert result.status == "skipped" and result.version is None, result.message
    assert result.drift and (result.drift.stopped_at, result.drift.kept_step) == (2, 0)
    assert "drift budget: KL to the base" in result.message and "nothing new to register" in result.message
    registry = Registry(settings, factory)
    assert [v.version for v in registry.list_versions()] == ["1"]
    run = registry.client.get_run(str(result.run_id))
    assert run.data.tags["flywheel.outcome"] == "drift_budget_spent" and run.info.status == "FINISHED"
    assert (run.data.metrics["drift_stopped"], run.data.metrics["drift_kept_step"]) == (1.0, 0.0)
