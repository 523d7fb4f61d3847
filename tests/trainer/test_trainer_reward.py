"""The reward model: TRL's reward trainer on the shipped MiniLM, weighted, with an ensemble's uncertainty."""

from __future__ import annotations

from pathlib import Path

from tests.trainer.test_trainer_loop import PHRASE, fast_config
from trainer.pairs import PreferencePair, resample_by_weight
from trainer.reward import default_backbone, evaluate_reward_model, train_reward_model


def pair(i: int, weight: float = 1.0) -> PreferencePair:
    return PreferencePair(
        prompt_hash=f"h{i}",
        prompt=[{"role": "user", "content": f"Tell me about topic {i}."}],
        chosen=f"{PHRASE} Topic {i} is fine.",
        rejected=f"Sorry, unable to help. Topic {i} is dull.",
        chosen_response_id=f"resp_{i}_a",
        rejected_response_id=f"resp_{i}_b",
        source="pairwise",
        event_ids=(f"evt_{i}",),
        weight=weight,
    )


def test_weights_redraw_the_training_set_and_equal_weights_leave_it_alone() -> None:
    equal = [pair(i) for i in range(10)]
    assert resample_by_weight(equal, seed=0) == equal
    weighted = [pair(0, weight=9.0), *(pair(i, weight=0.1) for i in range(1, 10))]
    drawn = resample_by_weight(weighted, seed=0)
    assert len(drawn) == 10 and sum(p.prompt_hash == "h0" for p in drawn) >= 5


def test_reward_ensemble_learns_the_preference_and_reports_its_spread(tmp_path: Path) -> None:
    assert (default_backbone() / "config.json").exists()
    config = fast_config(reward_ensemble=2, reward_max_steps=4, reward_learning_rate=2e-4, reward_batch_size=8)

    model = train_reward_model(default_backbone(), [pair(i) for i in range(16)], config, tmp_path)
    evaluation = evaluate_reward_model(model, [pair(i) for i in range(100, 108)])

    assert len(model.members) == 2 and model.log_history and "margin" in model.log_history[0]
    assert evaluation.pairs == 8 and evaluation.heldout_accuracy >= 0.75
    assert evaluation.uncertainty > 0  # two seeds, two different heads
    scores = model.score([pair(0).prompt], ["anything"])
    assert scores.shape == (2, 1)
