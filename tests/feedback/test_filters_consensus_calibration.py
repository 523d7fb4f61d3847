"""Honest raters are judged against how often honest raters really disagree with the consensus model.

The regression (issue 10, the ``prose`` demo run): under a taste where most pairs tie, a rater has
few informative votes, and the former rule compared their disagreements with the pooled rate of
the three quarters of raters who disagree least. Dropping the quarter who disagree most drops
the honest raters who slipped as well, so that rate sat below the honest one, and honest raters
with a few slips and a few of the model's own errors were condemned. Here a small synthetic
history in that regime (answers mostly prose, a taste about layout: most pairs tie) on which the
former rule condemned an honest rater (``u0015``, who slipped on 4 of 30 votes: 5 of 22 judged
votes against the model, a binomial tail of 0.004 at the pooled rate, floored at 5 %) besides the
four attackers, and the tests the filter now makes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom

from feedback.filters import Pipeline
from feedback.filters.consensus import Calibration, ConsensusFilter, Test, Trust, Votes, tail
from tests.bench.synthetic_history import History, Population, build_history
from tests.feedback.filtering import filter_settings

# Mostly prose answers judged by a taste about layout: most pairs tie, ~15-20 informative votes a rater.
MOSTLY_TIES = Population(honest=25, honest_votes=30, attackers=4, attacker_votes=30, flippers=4, taste="prose",
                         list_share=0.11, seed=14)


@pytest.fixture(scope="module")
def history() -> History:
    return build_history(MOSTLY_TIES)


def test_the_history_is_one_of_mostly_ties(history: History) -> None:
    state = history.state
    honest_pairs = [v.label for rater, votes in state.votes.items() if history.kinds[rater] == "honest"
                    for v in votes if v.kind == "pairwise"]
    assert honest_pairs.count("tie") > 0.6 * len(honest_pairs)


def test_no_honest_rater_is_condemned_and_the_attackers_are(history: History) -> None:
    consensus = Pipeline(filter_settings()).consensus
    flags = consensus.review(history.state, set(history.state.votes))
    kinds = {f.rater: history.kinds[f.rater] for f in flags}
    assert "honest" not in kinds.values()
    assert sorted(r for r, kind in history.kinds.items() if kind == "attacker") == sorted(
        r for r, kind in kinds.items() if kind == "attacker")
    for flag in flags:  # the evidence says what the rater was judged against
        evidence = flag.evidence
        assert evidence["disagreements"] > evidence["expected_disagreements"]
        assert evidence["adjusted_p_value"] <= consensus.max_p_value
        assert evidence["p_value"] <= evidence["adjusted_p_value"]


def _out_of_fold(history: History, consensus: ConsensusFilter) -> tuple[Votes, np.ndarray, np.ndarray, Trust]:
    """The modelled votes, their out-of-fold predictions, which are honest raters' (with a prediction), and whom
    the model learnt from."""
    snapshot = consensus.prepare(history.state, set(history.state.votes))
    assert snapshot is not None
    votes = consensus._votes(snapshot)
    _, p, trust = consensus._estimate(votes)
    honest = np.isin(votes.owner, [n for n, r in enumerate(votes.raters) if history.kinds[r] == "honest"])
    return votes, p, honest & ~np.isnan(p), trust


def _former_pooled_rate(votes: Votes, p: np.ndarray, without: str) -> float:
    """The former rule's population rate for testing rater ``without``: votes the model gives >= 65 % judged, the
    disagreement of the other raters (with 5 judged votes or more) pooled over the three quarters who disagree
    least."""
    sure = ~np.isnan(p) & (np.maximum(p, 1 - p) >= 0.65)
    against = sure & ((p >= 0.5) != (votes.y >= 0.5))
    per_rater = [(int(against[mine].sum()), int(sure[mine].sum())) for o, rater in enumerate(votes.raters)
                 if rater[1] != without and sure[mine := votes.owner == o].sum() >= 5]
    kept = sorted(per_rater, key=lambda kn: kn[0] / kn[1])[: math.ceil(0.75 * len(per_rater))]
    return sum(k for k, _ in kept) / sum(n for _, n in kept)


def test_the_calibrated_rate_is_the_honest_rate_where_the_former_pooled_rate_was_below_it(history: History) -> None:
    """The calibration (fitted without knowing who is honest) expects at least as many disagreements on the honest
    raters' judged votes as they have (its lapse rate is at least ``min_base_rate``: on the cautious side), though
    not so many that attackers hide among them; the former rule's pooled rate was below the honest raters' rate on
    the votes it judged."""
    consensus = Pipeline(filter_settings()).consensus
    votes, p, honest, trust = _out_of_fold(history, consensus)
    calibration = trust.calibration()
    judged = consensus._judged(votes, p, calibration) & honest
    expected = calibration.chance_against(p[judged], votes.pair[judged]).sum()
    observed = calibration.goes_against(p[judged], votes.pair[judged], votes.y[judged]).sum()
    assert judged.sum() > 200 and observed <= expected <= 1.6 * observed

    pooled = _former_pooled_rate(votes, p, without="u0015")
    sure = honest & (np.maximum(p, 1 - p) >= 0.65)
    assert pooled < 0.9 * ((p[sure] >= 0.5) != (votes.y[sure] >= 0.5)).mean()
    assert binom.sf(5 - 1, 22, max(pooled, 0.05)) <= 0.01  # the tail that condemned u0015 at the former level


def test_a_disagreement_where_honest_raters_rarely_disagree_weighs_more() -> None:
    q = np.array([0.05, 0.3])
    assert tail(np.array([True, False]), q, 0.2) < tail(np.array([False, True]), q, 0.2)


def test_equal_chances_give_the_binomial_tail() -> None:
    q = np.full(12, 0.08)
    for k in range(1, 8):
        against = np.arange(12) < k
        assert tail(against, q, 0.2) == pytest.approx(binom.sf(k - 1, 12, 0.08), rel=1e-9)


def test_the_tail_is_that_of_the_likelihood_ratio() -> None:
    """Against brute force over every outcome of 10 votes with unequal chances (the lattice's rounding aside)."""
    rng = np.random.default_rng(1)
    q = rng.uniform(0.05, 0.35, 10)
    inverted = q + 0.2 * (1 - 2 * q)
    weight = np.log(inverted / (1 - inverted)) - np.log(q / (1 - q))
    against = rng.random(10) < 0.4
    observed = weight[against].sum()
    exact = sum(float(np.prod(np.where(outcome, q, 1 - q))) for outcome in
                map(np.array, itertools.product([False, True], repeat=10)) if weight[outcome].sum() >= observed - 1e-9)
    assert tail(against, q, 0.2) == pytest.approx(exact, rel=0.02)


def test_few_informative_votes_give_no_verdict() -> None:
    """A kind of vote with one label only teaches the calibration nothing: nothing of it is judged."""
    p = np.array([0.9, 0.8, 0.95, 0.7])
    calibration = Calibration.fit(p, np.zeros(4, dtype=bool), np.ones(4), 0.05, np.ones(4))
    assert np.allclose(calibration.chance_against(p, np.zeros(4, dtype=bool)), 0.5)


def test_many_raters_with_a_little_bad_luck_are_not_condemned_together() -> None:
    """Benjamini-Hochberg over every rater tested: among a hundred honest raters one tail of 0.005 is expected. Raters
    with enough votes of which the model judges too few count as untested hypotheses, not as no hypotheses."""
    consensus = Pipeline(filter_settings()).consensus
    tests = {n: Test(20, 5, 2.0, 0.5) for n in range(100)} | {100: Test(20, 6, 2.0, 0.005)}
    assert consensus._adjusted(tests, 101)[100] > consensus.max_p_value
    assert consensus._adjusted({100: tests[100]}, 1)[100] == pytest.approx(0.005)
    assert consensus._adjusted({100: tests[100]}, 30)[100] == pytest.approx(0.15)
    assert consensus._adjusted({100: Test(8, 6, 1.0, 1e-5)}, 30) == {}  # too few judged votes: no test


def test_trust_without_any_out_of_fold_vote_keeps_every_weight_finite() -> None:
    """A search whose folds gave no vote a prediction (a young history, spread thin) has nothing to learn trust
    from: the weights stay as they were. The mixture once took the mean of no raters, NaN, and the next fit
    refused NaN sample weights, which stopped the worker (spread_campaign with the engine, 2026-12-06)."""
    consensus = ConsensusFilter.from_settings(filter_settings())
    empty = np.array([]), np.array([], dtype=bool), np.array([]), np.array([], dtype=int)
    weight = consensus._trust(Trust(*empty, weight=np.ones(5), floor=consensus.min_base_rate))
    assert np.array_equal(weight, np.ones(5))
