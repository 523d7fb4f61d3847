"""Velocity: per-user and per-app rate windows over the votes' own timestamps.

Windows use the gateway's ``created_at`` rather than arrival time, so a re-delivered or
lagging partition is judged as it happened, and a restart replays to the same counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from feedback.filters.base import FilterState, Finding, Vote, window_count
from feedback.filters.settings import FilterSettings


@dataclass(kw_only=True)
class VelocityFilter:
    user_window_s: float
    user_max: int
    app_window_s: float
    app_max: int
    name: str = "velocity"
    reasons: tuple[str, ...] = ("user_rate", "app_rate")

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> VelocityFilter:
        """The windows at the settings' ``time_scale``."""
        s = settings
        return cls(user_window_s=s.scaled(s.velocity_user_window_s), user_max=s.velocity_user_max,
                   app_window_s=s.scaled(s.velocity_app_window_s), app_max=s.velocity_app_max)

    def judge(self, state: FilterState, vote: Vote) -> list[Finding]:
        findings = []
        user = window_count(state.user_times[vote.rater], vote.at, self.user_window_s) + 1
        if user > self.user_max:
            findings.append(Finding("user_rate", {"votes": user, "window_s": self.user_window_s, "max": self.user_max}))
        app = window_count(state.app_times[vote.rater[0]], vote.at, self.app_window_s) + 1
        if app > self.app_max:
            findings.append(Finding("app_rate", {"votes": app, "window_s": self.app_window_s, "max": self.app_max}))
        return findings
