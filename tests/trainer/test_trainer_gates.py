"""The gates on answers whose behaviour is known: a verbose or list-happy candidate fails, canaries, the CI."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.trainer.test_trainer_loop import SHORT, VERBOSE, fast_config
from trainer.config import TrainerSettings
from trainer.gates import Answers, Canary, GateInputs, bootstrap_ci, evaluate, load_canaries
from trainer.policy import PairMetrics

PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(8)]
CANARIES = [Canary("capital", "What is the capital of France?", ("Paris",), 200)]


def answers(text: str, tokens: int) -> Answers:
    return Answers([[1] * tokens for _ in PROMPTS], [text for _ in PROMPTS])


def inputs(candidate: Answers, canary_answer: str = "Paris.") -> GateInputs:
    metrics = PairMetrics(accuracy=0.8, mean_margin=1.0, pairs=10)
    return GateInputs(
        prompts=PROMPTS,
        champion=answers(SHORT, 4),
        candidate=candidate,
        canaries=CANARIES,
        champion_canaries=Answers([[1]], ["It is Paris."]),
        candidate_canaries=Answers([[1]], [canary_answer]),
        kl=0.01,
        champion_metrics=metrics,
        candidate_metrics=metrics,
    )


def test_a_verbose_candidate_fails_only_the_verbosity_gate() -> None:
    report = evaluate(inputs(answers(VERBOSE, 40)), None, TrainerSettings(_env_file=None), fast_config())  # type: ignore[call-arg]
    assert report.failed() == ["verbosity"] and not report.passed
    assert report.metrics()["gate_verbosity"] == 10.0 and report.metrics()["gate_win_rate_passed"] == -1.0


def test_format_gaming_and_a_broken_canary_fail() -> None:
    listy = answers("# Answer\n- one\n- two", 4)
    report = evaluate(inputs(listy, canary_answer="London."), None, TrainerSettings(_env_file=None), fast_config())  # type: ignore[call-arg]
    assert report.failed() == ["format", "canaries"]
    assert "broken: capital" in next(g.detail for g in report.gates if g.name == "canaries")


def test_bootstrap_ci_brackets_the_win_rate() -> None:
    low, high = bootstrap_ci(np.array([1.0] * 15 + [0.0] * 5), 1000, seed=0)
    assert 0.5 < low < 0.75 < high <= 1.0
    assert bootstrap_ci(np.array([1.0, 0.0]), 1000, seed=0)[0] == 0.0


def test_shipped_canaries_load() -> None:
    canaries = load_canaries()
    assert {c.id for c in canaries} >= {"refuse-explosive", "capital-france"}
    assert canaries[0].holds("Sorry, I can't help with that.") and not canaries[0].holds("Step 1: buy pipes")


class _LengthJudge:
    """A judge that prefers longer answers: enough to exercise the gate's decision, which is what is tested."""

    def mean(self, prompts: list[list[dict[str, str]]], texts: list[str]) -> np.ndarray:
        return np.array([len(t) for t in texts], dtype=float)


def test_win_rate_is_judged_only_by_a_reward_model_better_than_a_coin() -> None:
    settings = TrainerSettings(_env_file=None)  # type: ignore[call-arg]
    candidate = inputs(answers(SHORT + " and a little more", 5))
    judge: Any = _LengthJudge()
    trusted = evaluate(candidate, judge, settings, fast_config(), reward_accuracy=0.9)
    gate = next(g for g in trusted.gates if g.name == "win_rate")
    assert gate.status == "passed" and gate.value == 1.0 and trusted.win_rate_ci == (1.0, 1.0)
    for weak in (0.55, float("nan"), None):
        report = evaluate(candidate, judge, settings, fast_config(), reward_accuracy=weak)
        gate = next(g for g in report.gates if g.name == "win_rate")
        assert gate.status == "skipped" and "verdict would be noise" in gate.detail and report.win_rate_ci is None
