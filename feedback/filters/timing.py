"""Implausible timing: a vote faster than a person could read the answer (or the two answers of a pair).

Time to vote is ``feedback.created_at - completion.created_at``, both stamped by the
gateway (the completion when its answer was complete), so client clocks play no part.
"""

from __future__ import annotations

from dataclasses import dataclass

from feedback.filters.base import FilterState, Finding, Vote
from feedback.filters.settings import FilterSettings


@dataclass(kw_only=True)
class TimingFilter:
    min_ms: float
    ms_per_char: float
    name: str = "timing"
    reasons: tuple[str, ...] = ("too_fast",)

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> TimingFilter:
        """The thresholds at the settings' ``time_scale``."""
        return cls(min_ms=settings.scaled(settings.timing_min_ms),
                   ms_per_char=settings.scaled(settings.timing_ms_per_char))

    def judge(self, state: FilterState, vote: Vote) -> list[Finding]:
        answers = state.answers_of(vote)
        if not answers:
            return []  # integrity already objects
        needed_ms = self.min_ms + self.ms_per_char * sum(len(a.text) for a in answers)
        took_ms = (vote.created_at - max(a.created_at for a in answers)).total_seconds() * 1000
        if took_ms >= needed_ms:
            return []
        return [Finding("too_fast", {"time_to_vote_ms": round(took_ms, 1), "min_read_ms": round(needed_ms, 1)})]
