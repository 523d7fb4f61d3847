"""Rater reliability: a one-coin Dawid-Skene estimate of each rater's accuracy, turned into vote weights.

Items are the targets several raters voted on (the same answer, or the same pair); labels
are binary (up/down, a/b; ties and both-bad carry no direction and are left out). EM
alternates the posterior of each item's true label with each rater's accuracy, a Beta
prior keeping raters with little shared evidence near the prior. A rater below chance
gets no say in the consensus (rather than a flipped one), so a group that only overlaps
with attackers cannot be turned upside down by them. Agreement is scored
leave-one-out (the item's posterior without the rater's own vote), so a rater never
agrees with themselves, which plain DS lets dominate items with two raters.

Weight = (2p - 1) / (2 * prior - 1), clipped to [min_weight, 1]: 1.0 at the prior and
above, near the floor for a coin flipper. A new vote from a rater with enough shared items
whose accuracy is below ``quarantine_below`` (against the consensus, worse than chance) is
quarantined ``unreliable``; coin flippers are noisy, not adversarial, and keep a low weight.
Unlike bots and campaigns this is not a sticky flag: a consensus can be wrong for a while
(an undetected campaign outvoting honest raters), and once it heals the rater's weight and
verdicts recover; stored weights are rewritten after every batch.

The current reward model is one more rater (``REWARD_MODEL``): ``reward_scores`` gives its
votes (a pair's label is its higher-scored side, a single answer's is ``up`` above the median
score). It matters most where no two people voted on the same answer, as when each user rates
only what they were served: every voted answer with a score becomes an item shared with the
reward model. There its accuracy cannot be estimated (with one person and the model on each
item, who is right is not identified, and every honest rater would be pulled towards the
prior), so its voice is the held-out accuracy the trainer measured, and a model below
``reward_min_accuracy`` is not heard at all: against a weak judge even a perfect rater looks
unreliable (agreement with a judge of accuracy r tops out at r^2 + (1 - r)^2). The trainer
writes the scores after each round and the worker reads them from the database
(``feedback/filters/reward_scores.py``); the filter never imports the trainer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from feedback.filters.base import FilterState, Finding, Rater, Vote
from feedback.filters.settings import FilterSettings

POSITIVE = {"up": True, "a": True, "down": False, "b": False}
REWARD_MODEL: Rater = (0, "__reward_model__")


@dataclass(frozen=True)
class RewardJudge:
    """The current reward model as a rater: its scores (response id -> score) and the held-out accuracy the
    trainer measured, which is its voice in the estimate (fixed, not estimated: see the module doc)."""

    scores: Mapping[str, float]
    accuracy: float

    @functools.cached_property
    def median(self) -> float:
        """A single answer is the model's ``up`` above this (computed once per round's scores)."""
        return float(np.median(list(self.scores.values()))) if self.scores else 0.0


RewardScores = Callable[[], RewardJudge | None]


@dataclass(kw_only=True)
class ReliabilityFilter:
    prior_accuracy: float
    prior_strength: float
    min_weight: float
    min_items: int
    quarantine_below: float
    iterations: int
    reward_scores: RewardScores | None = None
    reward_min_accuracy: float = 0.8
    accuracy: dict[Rater, tuple[float, int]] = field(default_factory=dict)
    name: str = "reliability"
    reasons: tuple[str, ...] = ("unreliable",)

    @classmethod
    def from_settings(cls, settings: FilterSettings, *,
                      reward_scores: RewardScores | None = None) -> ReliabilityFilter:
        """``reward_scores``: the trainer's reward-model scores, one more rater once accurate enough."""
        s = settings
        return cls(prior_accuracy=s.reliability_prior_accuracy, prior_strength=s.reliability_prior_strength,
                   min_weight=s.reliability_min_weight, min_items=s.reliability_min_items,
                   quarantine_below=s.reliability_quarantine_below, iterations=s.reliability_iterations,
                   reward_scores=reward_scores, reward_min_accuracy=s.reliability_reward_min_accuracy)

    def _judge(self) -> RewardJudge | None:
        """The reward model's scores, if there are any and the model is accurate enough to be heard."""
        judge = self.reward_scores() if self.reward_scores is not None else None
        return judge if judge is not None and judge.scores and judge.accuracy >= self.reward_min_accuracy else None

    def _votes(self, state: FilterState, judge: RewardJudge | None) -> list[tuple[Rater, str, bool]]:
        """(rater, item, positive) of accepted votes by unflagged raters on items with two raters or more."""
        by_item: dict[str, dict[Rater, bool]] = {}
        for rater, votes in state.votes.items():
            if state.flags.get(rater):
                continue
            for vote in votes:
                if vote.key in state.accepted and vote.label in POSITIVE:
                    by_item.setdefault(vote.target, {}).setdefault(rater, POSITIVE[vote.label])
        if judge is not None:
            self._add_reward_model(state, by_item, judge)
        return [(r, item, pos) for item, raters in by_item.items() if len(raters) >= 2 for r, pos in raters.items()]

    @staticmethod
    def _add_reward_model(state: FilterState, by_item: dict[str, dict[Rater, bool]], judge: RewardJudge) -> None:
        scores = judge.scores
        for item, raters in by_item.items():
            if item in state.answers and item in scores:
                raters[REWARD_MODEL] = scores[item] > judge.median
            pair = sorted(state.pairs.get(item, []), key=lambda a: a.response_id)
            if len(pair) == 2 and all(a.response_id in scores for a in pair):
                raters[REWARD_MODEL] = scores[pair[0].response_id] >= scores[pair[1].response_id]

    def estimate(self, state: FilterState) -> dict[Rater, tuple[float, int]]:
        """Each rater's posterior accuracy and number of shared items."""
        judge = self._judge()
        votes = self._votes(state, judge)
        if not votes:
            return {}
        raters = sorted({r for r, _, _ in votes})
        items = sorted({i for _, i, _ in votes})
        r_index = {r: n for n, r in enumerate(raters)}
        i_index = {i: n for n, i in enumerate(items)}
        vr = np.array([r_index[r] for r, _, _ in votes])
        vi = np.array([i_index[i] for _, i, _ in votes])
        sign = np.array([1.0 if pos else -1.0 for _, _, pos in votes])
        alpha = self.prior_accuracy * self.prior_strength
        beta = (1 - self.prior_accuracy) * self.prior_strength
        counts = np.bincount(vr, minlength=len(raters)).astype(float)
        accuracy = np.full(len(raters), self.prior_accuracy)
        fixed = r_index.get(REWARD_MODEL)
        for _ in range(self.iterations):
            if fixed is not None and judge is not None:
                accuracy[fixed] = judge.accuracy
            voice = np.maximum(accuracy, 0.5)  # below-chance raters lose their say, not flip the consensus
            logit = np.log(voice / (1 - voice))
            contribution = sign * logit[vr]
            item_logit = np.bincount(vi, weights=contribution, minlength=len(items))
            others = item_logit[vi] - contribution  # leave the rater's own vote out
            agree = 1 / (1 + np.exp(-sign * others))
            accuracy = (alpha + np.bincount(vr, weights=agree, minlength=len(raters))) / (alpha + beta + counts)
            accuracy = np.clip(accuracy, 1e-3, 1 - 1e-3)
        return {r: (float(accuracy[n]), int(counts[n])) for r, n in r_index.items() if r != REWARD_MODEL}

    def weight_of(self, accuracy: float) -> float:
        weight = (2 * accuracy - 1) / (2 * self.prior_accuracy - 1)
        return round(min(1.0, max(self.min_weight, weight)), 4)

    def review(self, state: FilterState) -> None:
        """Re-estimate every rater after a batch (agreement is global: one vote moves the consensus)."""
        self.accuracy = self.estimate(state)
        state.weights = {rater: self.weight_of(acc) for rater, (acc, _) in self.accuracy.items()}

    def judge(self, state: FilterState, vote: Vote) -> list[Finding]:
        accuracy, items = self.accuracy.get(vote.rater, (self.prior_accuracy, 0))
        if items < self.min_items or accuracy >= self.quarantine_below:
            return []
        return [Finding("unreliable", {"accuracy": round(accuracy, 3), "shared_items": items,
                                       "threshold": self.quarantine_below})]
