"""What every filter shares: the vote and answer records, the shared state, and the Filter protocols.

A filter looks at one vote at a time (``judge``) against the state built from every vote
stored before it, and may look at the whole history (``review``; the pipeline says when) to
condemn raters whose pattern only shows over time. A condemned rater is flagged (sticky,
stored) and the pipeline moves their accepted votes to quarantine.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

Rater = tuple[int, str]
"""(app id, end-user id): user ids are the app's own, so the same id in two apps is two people."""


@dataclass(frozen=True)
class Answer:
    """A served completion, as much of it as the filters need."""

    response_id: str
    pair_id: str | None
    app_id: int
    prompt_hash: str
    text: str
    created_at: datetime
    prompt: str = ""  # the user turns' text: the consensus model reads how the answer speaks to it


@dataclass(frozen=True)
class Vote:
    """One feedback event, stored (accepted or quarantined)."""

    event_id: str
    rater: Rater
    kind: str  # thumbs | pairwise
    target: str  # response id (thumbs) or pair id (pairwise)
    label: str  # up, down, a, b, tie, both_bad
    comment: str | None
    created_at: datetime

    @property
    def at(self) -> float:
        return self.created_at.timestamp()

    @property
    def key(self) -> tuple[int, str]:
        """(app id, event id): event ids are unique per app only."""
        return self.rater[0], self.event_id


@dataclass(frozen=True)
class Finding:
    """One filter's objection to one vote."""

    reason: str
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Flag:
    """A rater condemned by a history filter; every stored and future vote of theirs is quarantined."""

    rater: Rater
    reason: str
    evidence: dict[str, Any]


@dataclass
class FilterState:
    """Everything the filters remember, rebuilt from the database on start (see ``Pipeline.rebuild``)."""

    answers: dict[str, Answer] = field(default_factory=dict)
    pairs: dict[str, list[Answer]] = field(default_factory=lambda: defaultdict(list))
    votes: dict[Rater, list[Vote]] = field(default_factory=lambda: defaultdict(list))
    first_vote: dict[tuple[Rater, str], str] = field(default_factory=dict)
    user_times: dict[Rater, list[float]] = field(default_factory=lambda: defaultdict(list))
    app_times: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    accepted: set[tuple[int, str]] = field(default_factory=set)  # Vote.key of accepted votes
    stored: set[tuple[int, str]] = field(default_factory=set)  # Vote.key of every recorded vote
    flags: dict[Rater, dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    weights: dict[Rater, float] = field(default_factory=dict)

    def add_answer(self, answer: Answer) -> None:
        if answer.response_id not in self.answers:
            self.answers[answer.response_id] = answer
            if answer.pair_id is not None:
                self.pairs[answer.pair_id].append(answer)

    def answers_of(self, vote: Vote) -> list[Answer]:
        """The answers a vote is about: one for thumbs, both (A first) for a pair; [] if unknown."""
        if vote.kind == "thumbs":
            answer = self.answers.get(vote.target)
            return [] if answer is None else [answer]
        return sorted(self.pairs.get(vote.target, []), key=lambda a: a.response_id)

    def endorsed(self, vote: Vote) -> Answer | None:
        """The answer a vote speaks for: the upvoted one, or the chosen side of a pair."""
        answers = self.answers_of(vote)
        if vote.label == "up" and answers:
            return answers[0]
        if vote.label in ("a", "b") and len(answers) == 2:
            return answers[0 if vote.label == "a" else 1]
        return None

    def record(self, vote: Vote, accepted: bool) -> None:
        """Remember a stored vote; every filter's history is derived from these calls."""
        self.votes[vote.rater].append(vote)
        self.stored.add(vote.key)
        self.first_vote.setdefault((vote.rater, vote.target), vote.event_id)
        bisect.insort(self.user_times[vote.rater], vote.at)
        bisect.insort(self.app_times[vote.rater[0]], vote.at)
        if accepted:
            self.accepted.add(vote.key)

    def weight(self, rater: Rater) -> float:
        return self.weights.get(rater, 1.0)


class Filter(Protocol):
    """A per-vote check: ``judge`` sees the vote before it is recorded in the state."""

    name: str
    reasons: tuple[str, ...]

    def judge(self, state: FilterState, vote: Vote) -> list[Finding]: ...


class HistoryFilter(Protocol):
    """A check on raters' whole history (the pipeline says when); ``raters`` voted since its last review."""

    name: str
    reasons: tuple[str, ...]

    def review(self, state: FilterState, raters: set[Rater]) -> list[Flag]: ...


def window_count(times: list[float], at: float, window: float) -> int:
    """How many of the sorted ``times`` fall in ``(at - window, at]``."""
    return bisect.bisect_right(times, at) - bisect.bisect_right(times, at - window)
