"""Integrity: the answer or pair exists, was served to the caller's app, and the vote is not stale.

Only answers an app was served may train, so a vote on an unknown id, or from another app
than the one served, never becomes training data (the id could be guessed or replayed).
"""

from __future__ import annotations

from dataclasses import dataclass

from feedback.filters.base import FilterState, Finding, Vote
from feedback.filters.settings import FilterSettings


@dataclass(kw_only=True)
class IntegrityFilter:
    max_age_s: float
    name: str = "integrity"
    reasons: tuple[str, ...] = ("unknown_response", "unknown_pair", "app_mismatch", "expired")

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> IntegrityFilter:
        return cls(max_age_s=settings.integrity_max_age_s)

    def judge(self, state: FilterState, vote: Vote) -> list[Finding]:
        answers = state.answers_of(vote)
        if vote.kind == "thumbs" and not answers:
            return [Finding("unknown_response", {"response_id": vote.target})]
        if vote.kind == "pairwise" and len(answers) < 2:
            found = [a.response_id for a in answers]
            return [Finding("unknown_pair", {"pair_id": vote.target, "found_responses": found})]
        findings = []
        owners = sorted({a.app_id for a in answers})
        if owners != [vote.rater[0]]:
            findings.append(Finding("app_mismatch", {"event_app_id": vote.rater[0], "served_app_ids": owners}))
        age_s = (vote.created_at - max(a.created_at for a in answers)).total_seconds()
        if age_s > self.max_age_s:
            findings.append(Finding("expired", {"age_s": round(age_s, 3), "max_age_s": self.max_age_s}))
        return findings
