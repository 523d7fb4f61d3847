"""Raters who vote against the crowd's taste: a consensus model of what the other raters prefer.

Reliability (Dawid-Skene) needs several raters on one item; when every user votes only on
the answers they were served, items are never shared and a rater who mixes honest-looking
votes with votes against the majority's taste (a slow attacker) goes unseen. What raters
share is their *taste*, so the filter learns it from their votes instead of from items.

Nobody tells the filter the preference. Every answer is described by surface features
(numbered or bulleted steps, line count, word count, word-count bands, length); a logistic
model is fitted to the accepted votes of the unflagged raters: for a pair, on the difference
of the two answers' features (a Bradley-Terry model, plus an intercept for a side bias); for
a thumb, on the answer's own features. The rater under test is left out of the fit (their
votes never teach the model; a warm-started refit per rater tested, after a cheap screen with
the model fitted on everyone), and each of their directional votes (up/down, a/b; ties and
both-bad say nothing) is compared with the model's side when the model is confident
(probability at least ``min_confidence`` for one side). Agreement of the other raters with
the model sets the population's disagreement rate ``p0`` (pooled over the three quarters of
the raters with ``min_votes // 2`` judged votes who agree most, so coin flippers and attackers
do not inflate it), floored at ``min_base_rate``.

A rater with ``min_votes`` judged votes of which ``k`` disagree is flagged ``against_consensus``
when ``k / n >= min_rate`` and the binomial tail ``P(X >= k | n, p0) <= max_p_value``
(``tests/bench/consensus_power.py`` prints how often that catches an attacker and condemns an
honest rater, by history length). The
flag is sticky, as for bots and campaigns: a patient attacker's honest-looking votes are what
buy trust for the poisoned ones, so all of them go. The model needs ``min_population`` judged
votes from other raters before anyone is tested.

A coin flipper (no malice, no taste) disagrees about half the time and is flagged too: their
votes carry no signal for training, so losing them costs nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from feedback.filters.base import Answer, FilterState, Flag, Rater, Vote
from feedback.filters.campaigns import binomial_tail

POSITIVE = {"up": True, "a": True, "down": False, "b": False}
_STEP = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)
_BULLET = re.compile(r"^\s*[-*\u2022]\s+\S", re.MULTILINE)
_BANDS = (5, 10, 15, 20, 25, 30, 35, 40, 50, 60, 80, 120)  # word-count thresholds, learned per band


def describe(text: str) -> np.ndarray:
    """Surface features of one answer (no content: the model learns a taste, not a topic)."""
    words = len(text.split())
    lines = sum(1 for line in text.splitlines() if line.strip())
    steps = len(_STEP.findall(text))
    bullets = len(_BULLET.findall(text))
    return np.array([
        float(steps > 0), math.log1p(steps), float(bullets > 0), math.log1p(lines), math.log1p(words),
        math.log1p(len(text)), float(text.rstrip().endswith((".", "!", "?"))),
        *(float(words <= band) for band in _BANDS),
    ])


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 0.3, iterations: int = 25,
                 start: np.ndarray | None = None) -> np.ndarray:
    """Ridge-penalised logistic regression by Newton steps (the first column, the intercept, unpenalised)."""
    w = np.zeros(x.shape[1]) if start is None else start.copy()
    penalty = np.full(x.shape[1], ridge)
    penalty[0] = 1e-6
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
        gradient = x.T @ (p - y) + penalty * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return w


@dataclass
class ConsensusFilter:
    min_votes: int
    min_population: int
    min_confidence: float
    min_base_rate: float
    min_rate: float
    max_p_value: float
    name: str = "consensus"
    reasons: tuple[str, ...] = ("against_consensus",)
    _described: dict[str, np.ndarray] = field(default_factory=dict)

    def _features(self, answer: Answer) -> np.ndarray:
        cached = self._described.get(answer.response_id)
        if cached is None:
            cached = self._described[answer.response_id] = describe(answer.text)
        return cached

    def _row(self, state: FilterState, vote: Vote) -> tuple[int, np.ndarray, float] | None:
        """(0 thumbs | 1 pair, features with intercept, 1.0 if positive) of a directional vote, else None."""
        if vote.label not in POSITIVE:
            return None
        answers = state.answers_of(vote)
        if vote.kind == "thumbs" and len(answers) == 1:
            kind, x = 0, self._features(answers[0])
        elif vote.kind == "pairwise" and len(answers) == 2:
            diff = self._features(answers[0]) - self._features(answers[1])
            kind, x = 1, np.concatenate((diff, np.sign(diff)))
        else:
            return None
        return kind, np.concatenate(([1.0], x)), float(POSITIVE[vote.label])

    def _table(self, state: FilterState) -> dict[Rater, list[tuple[int, np.ndarray, float]]]:
        """Each unflagged rater's accepted directional votes (the first per target)."""
        table: dict[Rater, list[tuple[int, np.ndarray, float]]] = {}
        for rater, votes in state.votes.items():
            if state.flags.get(rater):
                continue
            rows = []
            for vote in votes:
                if vote.key in state.accepted and state.first_vote.get((rater, vote.target)) == vote.event_id:
                    row = self._row(state, vote)
                    if row is not None:
                        rows.append(row)
            if rows:
                table[rater] = rows
        return table

    def review(self, state: FilterState, raters: set[Rater]) -> list[Flag]:
        """Test ``raters`` with ``min_votes`` or more votes against a model fitted without them."""
        table = self._table(state)
        candidates = [r for r in sorted(raters) if r in table and len(table[r]) >= self.min_votes]
        if not candidates:
            return []
        index = {rater: n for n, rater in enumerate(table)}
        kinds = []
        for kind in (0, 1):
            rows = [(index[rater], x, y) for rater, rs in table.items() for k, x, y in rs if k == kind]
            if rows:
                owner = np.array([o for o, _, _ in rows])
                x = np.array([x for _, x, _ in rows])
                y = np.array([y for _, _, y in rows])
                kinds.append((owner, x, y, fit_logistic(x, y)))  # the warm start of every leave-one-out fit
        # Screen with the model fitted on everyone (the rater included, so it leans their way): a rater
        # who disagrees with it on less than half of min_rate of their votes cannot reach min_rate when
        # left out of the fit in any realistic population, and is spared the leave-one-out fit.
        judged_all = np.zeros(len(table))
        against_all = np.zeros(len(table))
        for owner, x, y, w in kinds:
            p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
            sure = np.maximum(p, 1 - p) >= self.min_confidence
            judged_all += np.bincount(owner, weights=sure, minlength=len(table))
            against_all += np.bincount(owner, weights=sure & ((p >= 0.5) != (y >= 0.5)), minlength=len(table))
        flags = []
        for rater in candidates:
            me = index[rater]
            if against_all[me] < self.min_rate / 2 * max(1.0, judged_all[me]):
                continue
            judged = np.zeros(len(table))
            against = np.zeros(len(table))
            for owner, x, y, start in kinds:
                others = owner != me
                if others.sum() < self.min_population // 2 or not 0 < y[others].sum() < others.sum():
                    continue
                w = fit_logistic(x[others], y[others], start=start)
                p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
                sure = np.maximum(p, 1 - p) >= self.min_confidence
                judged += np.bincount(owner, weights=sure, minlength=len(table))
                against += np.bincount(owner, weights=sure & ((p >= 0.5) != (y >= 0.5)), minlength=len(table))
            n, k = int(judged[me]), int(against[me])
            population = [(int(judged[o]), int(against[o])) for o in range(len(table)) if o != me]
            if sum(j for j, _ in population) < self.min_population:
                continue
            base = max(self.min_base_rate, self.population_rate(population))
            p_value = self.condemns(n, k, base)
            if p_value is not None:
                flags.append(Flag(rater, "against_consensus", {
                    "judged_votes": n, "disagreements": k, "population_rate": round(base, 4),
                    "p_value": p_value, "population_votes": sum(j for j, _ in population)}))
        return flags

    def condemns(self, judged: int, against: int, population_rate: float) -> float | None:
        """The binomial tail of ``against`` disagreements in ``judged`` votes if they condemn the rater, else None.

        ``min_votes`` and ``min_rate`` guard both ends: too few votes to judge, and a long history
        whose small excess over the population rate is significant yet no attack.
        """
        if judged < self.min_votes or against < self.min_rate * judged:
            return None
        p_value = binomial_tail(against, judged, population_rate)
        return p_value if p_value <= self.max_p_value else None

    def population_rate(self, judged: list[tuple[int, int]]) -> float:
        """Disagreement of the other raters, pooled over the three quarters who agree most (coin flippers out)."""
        ranked = sorted((k / n, n, k) for n, k in judged if n >= self.min_votes // 2)
        kept = ranked[: max(1, math.ceil(0.75 * len(ranked)))] if ranked else []
        votes = sum(n for _, n, _ in kept)
        return sum(k for _, _, k in kept) / votes if votes else 0.0
