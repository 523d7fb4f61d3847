"""Duplicates: one vote per user per response (thumbs) or per pair (pairwise); the first stored vote wins.

The first vote wins because it is the one given before the user saw any effect of voting,
and because "last wins" would let anyone flip a stored vote by spamming. Later votes are
kept in quarantine (``duplicate_vote``, with the winning event id) so nothing is lost.
Repeated event ids never get here: the store treats them as no-ops.
"""

from __future__ import annotations

from dataclasses import dataclass

from feedback.filters.base import FilterState, Finding, Vote


@dataclass
class DuplicateFilter:
    name: str = "duplicates"
    reasons: tuple[str, ...] = ("duplicate_vote",)

    def judge(self, state: FilterState, vote: Vote) -> list[Finding]:
        first = state.first_vote.get((vote.rater, vote.target))
        if first is None:
            return []
        return [Finding("duplicate_vote", {"target": vote.target, "first_event_id": first})]
