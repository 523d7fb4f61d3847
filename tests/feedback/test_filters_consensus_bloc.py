"""A bloc that inverts most of its votes must not teach the consensus model its inversion.

The regression (issue 10, found by the demo's ablation, ``demo_sabotage``): eight patient accounts
inverting 80 % of their votes, a third of the directional votes with the coin flippers, passed
every filter in three rounds. Fitted on every vote alike, the consensus model still ranked honest
votes well but so flatly that its calibration judged nothing, and nobody was tested. The model is
now fitted on votes weighed by their raters' trust, estimated together with it
(``ConsensusFilter._estimate``). The history here has the demo's proportions (20 honest raters with
10 votes, 8 attackers with 16, 4 coin flippers); the taste is every development taste of the
simulator in turn, which labels the votes and is never seen by the filter. The filter before the
change flagged 6 of these 40 attackers and left 4 of 5 tastes with none.
"""

from __future__ import annotations

import pytest

from feedback.filters import Pipeline
from flywheel.simulation.tastes import TASTE_SETS
from tests.bench.synthetic_history import History, Population, build_history
from tests.feedback.filtering import filter_settings

BLOC = Population(honest=20, honest_votes=10, attackers=8, attacker_votes=16, poison_share=0.8, flippers=4,
                  list_share=0.3, seed=5)


@pytest.fixture(scope="module")
def histories() -> list[History]:
    return [build_history(Population(**{**BLOC.__dict__, "taste": taste})) for taste in TASTE_SETS["development"]]


def test_a_bloc_inverting_most_of_its_votes_is_flagged_and_no_honest_rater(histories: list[History]) -> None:
    caught, attackers = 0, 0
    for history in histories:
        flags = Pipeline(filter_settings()).consensus.review(history.state, set(history.state.votes))
        kinds = [history.kinds[f.rater] for f in flags]
        assert "honest" not in kinds
        caught += kinds.count("attacker")
        attackers += list(history.kinds.values()).count("attacker")
    assert attackers == 8 * len(histories) and caught >= 0.95 * attackers


def test_the_model_learns_from_the_honest_raters(histories: list[History]) -> None:
    """The trust the model is fitted with: every attacker far below every honest rater but a few."""
    consensus = Pipeline(filter_settings()).consensus
    history = histories[0]
    snapshot = consensus.prepare(history.state, set(history.state.votes))
    assert snapshot is not None
    votes = consensus._votes(snapshot)
    _, _, trust = consensus._estimate(votes)
    honest = sorted(t for r, t in zip(votes.raters, trust.weight, strict=True) if history.kinds[r] == "honest")
    attackers = [t for r, t in zip(votes.raters, trust.weight, strict=True) if history.kinds[r] == "attacker"]
    assert max(attackers) < 0.1 and honest[2] > 0.5
