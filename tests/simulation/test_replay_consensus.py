"""The replay bench's searches as the history grows: flags stick, and one search is the worker's search."""

from __future__ import annotations

from feedback.filters import FilterSettings, Pipeline
from feedback.filters.base import Flag, Rater
from feedback.filters.consensus import Snapshot
from tests.bench.replay_consensus import searched
from tests.bench.synthetic_history import Population, build_history, interleaved

SMALL = Population(honest=30, honest_votes=30, attackers=4, attacker_votes=40, poison_share=0.4, flippers=0)


def test_one_search_flags_what_the_worker_search_flags() -> None:
    history = build_history(SMALL)
    consensus = Pipeline(FilterSettings()).consensus
    snapshot = consensus.prepare(history.state, set(history.state.votes))
    assert snapshot is not None
    expected = {flag.rater for flag in consensus.decide(snapshot)}
    assert expected, "the synthetic attackers at 40 % are caught by one search (else this test checks nothing)"
    assert searched(history.state, Pipeline(FilterSettings()).consensus, 1) == expected


def test_a_rater_flagged_by_one_search_leaves_the_later_ones_and_stays_flagged() -> None:
    state = interleaved(build_history(SMALL).state)
    consensus = Pipeline(FilterSettings()).consensus
    searches: list[tuple[set[Rater], set[Rater]]] = []  # each search's candidates and flags
    decide = consensus.decide

    def spy(snapshot: Snapshot) -> list[Flag]:
        flags = decide(snapshot)
        searches.append((set(snapshot.candidates), {flag.rater for flag in flags}))
        return flags

    consensus.decide = spy  # type: ignore[method-assign]
    votes, flags = {rater: list(v) for rater, v in state.votes.items()}, dict(state.flags)
    flagged = searched(state, consensus, 3)
    early = set().union(*(found for _, found in searches[:-1]))
    assert early, "a search before the last condemns someone (else this test checks nothing)"
    assert not early & searches[-1][0] and early <= flagged
    assert state.votes == votes and state.flags == flags  # the replay leaves the state it read as it was
