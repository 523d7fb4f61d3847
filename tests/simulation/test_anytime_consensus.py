"""The anytime-valid variant of the consensus test (tests/bench/anytime_consensus.py): an e-value and its promise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from feedback.filters import FilterSettings
from feedback.filters.consensus import ConsensusFilter
from tests.bench.anytime_consensus import AnytimeConsensus, compared, e_value
from tests.bench.synthetic_history import Population, build_history, interleaved

RATES = np.linspace(0.2, 0.5, 4)


def test_its_expectation_under_the_null_is_one() -> None:
    """Over every outcome of 10 votes with unequal chances: what makes it an e-value."""
    q = np.random.default_rng(2).uniform(0.05, 0.35, 10)
    expectation = sum(float(np.prod(np.where(outcome, q, 1 - q))) * e_value(outcome, q, RATES)
                      for outcome in map(np.array, itertools.product([False, True], repeat=10)))
    assert expectation == pytest.approx(1.0, rel=1e-9)


def test_an_honest_rater_ever_crosses_the_level_at_most_that_often_however_long_they_vote() -> None:
    """Ville's inequality, on 4 000 honest raters tested after each of 200 votes: the share that ever reaches 1/level
    is at most the level (a per-search p-value at the same level is crossed far more often: the contrast shows the
    check can fail)."""
    rng = np.random.default_rng(0)
    level, raters, votes = 0.05, 4000, 200
    q = rng.uniform(0.05, 0.3, (raters, votes))
    against = rng.random((raters, votes)) < q
    chance = q[:, None, :]  # raters x alternatives x votes
    inverted = chance + RATES[None, :, None] * (1 - 2 * chance)
    steps = np.where(against[:, None, :], np.log(inverted / chance), np.log((1 - inverted) / (1 - chance)))
    running = np.exp(np.cumsum(steps, axis=2)).mean(axis=1)  # the e-value after each vote, per rater
    ever = (running >= 1 / level).any(axis=1).mean()
    assert 0 < ever <= level
    # the same raters tested after each vote by a normal approximation of the count at the same level
    z = (np.cumsum(against, axis=1) - np.cumsum(q, axis=1)) / np.sqrt(np.cumsum(q * (1 - q), axis=1))
    assert (z >= 1.645).any(axis=1).mean() > 3 * level


def test_it_is_the_filter_but_for_the_decision() -> None:
    """Same model and screen: on a history of attackers at 40 % both rules flag them, and only the rule differs."""
    history = build_history(Population(honest=30, honest_votes=30, attackers=4, attacker_votes=40, poison_share=0.4,
                                       flippers=0))
    flagged = compared(interleaved(history.state), FilterSettings(), 3)
    assert set(flagged) == {"filter", "anytime"}
    for rule, raters in flagged.items():
        assert {history.kinds[r] for r in raters} == {"attacker"}, rule
    filter_ = AnytimeConsensus.from_settings(FilterSettings())
    assert isinstance(filter_, ConsensusFilter) and type(filter_) is AnytimeConsensus
    assert filter_._p_value(np.zeros(12, dtype=bool), np.full(12, 0.1)) == 1.0  # no disagreement: no evidence
