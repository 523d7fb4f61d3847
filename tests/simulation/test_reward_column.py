"""The reward-column bench's AUC of the reward model alone: a thumb's score against the median, a pair's A - B."""

from __future__ import annotations

from feedback.filters import FilterSettings, Pipeline
from feedback.filters.consensus import POSITIVE
from feedback.filters.reliability import RewardJudge
from flywheel.simulation.tastes import make_taste
from tests.bench.replay_consensus import Sides
from tests.bench.reward_column import judge_auc
from tests.bench.synthetic_history import Population, build_history

POPULATION = Population(honest=20, honest_votes=20, attackers=2, attacker_votes=20, flippers=0, taste="numbers")


def test_a_judge_that_scores_by_the_taste_has_auc_one_and_its_inverse_zero() -> None:
    history = build_history(POPULATION)
    taste = make_taste(POPULATION.taste, 30)
    state = history.state
    sides: Sides = {}
    scores: dict[str, float] = {}
    for (_, user), votes in state.votes.items():
        for vote in votes:
            answers = state.answers_of(vote)
            if len(answers) == 1:
                verdict = taste.rate(answers[0].prompt, answers[0].text)
                scores[answers[0].response_id] = 1.0 if verdict == "up" else -1.0
            else:
                verdict = taste.pick(answers[0].prompt, answers[0].text, answers[1].text)
                scores[answers[0].response_id] = {"a": 1.0, "b": -1.0}.get(verdict, 0.0)
                scores[answers[1].response_id] = -scores[answers[0].response_id]
            sides[(user, vote.target)] = POSITIVE.get(verdict)
    snapshot = Pipeline(FilterSettings()).consensus.prepare(state, set(state.votes))
    assert snapshot is not None
    assert {s for s in sides.values()} >= {True, False}, "the taste takes both sides (else the AUC is undefined)"
    assert judge_auc(RewardJudge(scores, 0.9), snapshot, sides) == 1.0
    inverted = RewardJudge({r: -s for r, s in scores.items()}, 0.9)
    assert judge_auc(inverted, snapshot, sides) == 0.0
