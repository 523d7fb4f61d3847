"""When a canary has shown enough: roll it back, promote it, or stop it; valid however often it is checked.

A canary's evidence grows with every vote, and the rule is meant to be read after each one. A
fixed-sample test read like that (peeking) rejects a true null far more often than its alpha
says. This rule uses **always-valid** tests instead: each is a test martingale (a likelihood
ratio mixed over the alternatives) which, under "the canary is as good as the champion", stays
at or above ``1/alpha`` with probability at most ``alpha`` *over the whole stream* (Ville's
inequality, 1939). So checking after every vote, forever, keeps the error at ``alpha``.

Two tests, ``alpha`` split between them (a union bound covers "either one fires"):

- **Pairwise picks** (canary against champion in one pair): decisive picks are Bernoulli(p),
  p = 1/2 when both are equally good. The test is the beta-binomial mixture of the likelihood
  ratio against p = 1/2 with a Beta(a, a) mixing prior (Robbins 1970, "Statistical methods related
  to the law of the iterated logarithm"; Howard, Ramdas, McAuliffe and Sekhon 2021, "Time-uniform,
  nonparametric, nonasymptotic confidence sequences", section 3): a closed form, and an exact
  martingale under p = 1/2, so its guarantee needs no approximation.
- **Thumbs** (canary's up rate against the champion's, two independent streams): the mixture
  sequential probability ratio test with a normal mixture on the difference of the two rates
  (mSPRT; Johari, Koomen, Pekelis and Walsh 2017/2022, "Always valid inference: continuous
  monitoring of A/B tests", Operations Research 70(3)), with the variance of the difference
  estimated under the null from both arms' pooled rate (one added up and one down, so it is never
  0). The normal approximation makes this one asymptotically valid; ``min_thumbs_per_arm`` keeps
  it from being read on a handful of votes. Measured by simulation (tests/registry/test_canary_rule.py):
  with each arm's own variance instead of the pooled one, a canary with 5 % of the thumbs at a 0.9
  up rate was wrongly decided 5.7 % of the time at alpha 5 %; pooled, 2.4 %.

The direction of a rejection is the sign of the estimate (canary worse: rollback; better:
promote). Promotion waits for ``min_votes_promote`` votes about the canary (a rollback does not
wait: a bad canary should reach few users), and a canary still undecided after ``max_duration``
is stopped (every user back on the champion) rather than run forever.

Pure functions of counts (numpy-vectorised, so the simulation runs the same code the decision
does); ``evidence`` reads the counts from the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import betaln
from sqlalchemy.orm import Session

from registry.live import head_to_head, version_numbers

Action = Literal["continue", "rollback", "promote", "stop"]
CONTINUE, ROLLBACK, PROMOTE, STOP = 0, 1, 2, 3
"""The actions as codes, for the vectorised rule."""
ACTIONS: tuple[Action, ...] = ("continue", "rollback", "promote", "stop")


class CanaryRule(BaseModel):
    """The thresholds of the automatic canary decision (validated on construction)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(
        default=0.05, gt=0, lt=0.5,
        description="The chance of any wrong decision (rollback or promotion) about a canary exactly as good as "
                    "the champion, over its whole run, however often the rule is checked.")
    pairwise_alpha_share: float = Field(
        default=0.5, ge=0, le=1,
        description="The part of alpha spent on the pairwise test; the rest goes to the thumbs test. 1: picks only, "
                    "0: thumbs only.")
    pairwise_mixture_sd: float = Field(
        default=0.1, gt=0, lt=0.5,
        description="The spread of canary win rates around 0.5 the pairwise test is most sensitive to (standard "
                    "deviation of its Beta(a, a) mixing prior): smaller finds small differences sooner, large ones "
                    "later.")
    thumbs_mixture_sd: float = Field(
        default=0.1, gt=0, lt=1,
        description="The spread of up-rate differences (canary minus champion) the thumbs test is most sensitive "
                    "to (standard deviation of its normal mixing prior).")
    min_thumbs_per_arm: int = Field(
        default=30, ge=1, description="Thumbs each of canary and champion needs before the thumbs test is read "
                                      "(its normal approximation needs some votes).")
    min_votes_promote: int = Field(
        default=200, ge=0, description="Votes about the canary (its decisive picks plus its thumbs) before it may "
                                       "be promoted. A rollback does not wait.")
    max_duration: timedelta = Field(
        default=timedelta(hours=24), gt=timedelta(0),
        description="How long a canary may run undecided before it is stopped (every user back on the champion).")
    promote: bool = Field(default=True, description="Whether a canary shown better is promoted (False: only "
                                                    "rollbacks and stops are automatic).")

    @property
    def pairwise_alpha(self) -> float:
        return self.alpha * self.pairwise_alpha_share

    @property
    def thumbs_alpha(self) -> float:
        return self.alpha * (1 - self.pairwise_alpha_share)

    @property
    def beta_a(self) -> float:
        """The Beta(a, a) prior whose standard deviation is ``pairwise_mixture_sd``: var = 1 / (4 (2a + 1))."""
        return (1 / (4 * self.pairwise_mixture_sd**2) - 1) / 2


def pairwise_log_lr(wins: ArrayLike, losses: ArrayLike, a: float) -> NDArray[np.float64]:
    """log of the beta-binomial mixture likelihood ratio of ``wins`` in ``wins + losses`` against p = 1/2."""
    w, lo = np.asarray(wins, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    result: NDArray[np.float64] = betaln(a + w, a + lo) - betaln(a, a) + (w + lo) * np.log(2.0)
    return result


def thumbs_log_lr(canary_ups: ArrayLike, canary_n: ArrayLike, champion_ups: ArrayLike, champion_n: ArrayLike,
                  sd: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(log of the mSPRT normal-mixture ratio, estimated difference canary minus champion) of two up rates.

    Where an arm has no vote the ratio is 1 (log 0) and the difference 0.
    """
    uc, nc = np.asarray(canary_ups, dtype=np.float64), np.asarray(canary_n, dtype=np.float64)
    uh, nh = np.asarray(champion_ups, dtype=np.float64), np.asarray(champion_n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        difference = np.where((nc > 0) & (nh > 0), uc / np.maximum(nc, 1) - uh / np.maximum(nh, 1), 0.0)
        pooled = (uc + uh + 1) / (nc + nh + 2)  # the common rate under the null; never 0 or 1
        variance = pooled * (1 - pooled) * (1 / np.maximum(nc, 1) + 1 / np.maximum(nh, 1))
        tau2 = sd * sd
        log_lr = 0.5 * np.log(variance / (variance + tau2)) + tau2 * difference**2 / (2 * variance * (variance + tau2))
    log_lr = np.where((nc > 0) & (nh > 0), log_lr, 0.0)
    return log_lr, difference


def decide_many(rule: CanaryRule, wins: ArrayLike, losses: ArrayLike, canary_ups: ArrayLike, canary_n: ArrayLike,
                champion_ups: ArrayLike, champion_n: ArrayLike, elapsed_s: ArrayLike | float = 0.0,
                ) -> NDArray[np.int8]:
    """The rule on arrays of counts (one element per check): codes CONTINUE, ROLLBACK, PROMOTE or STOP."""
    w, lo = np.asarray(wins), np.asarray(losses)
    nc, nh = np.asarray(canary_n), np.asarray(champion_n)
    worse = np.zeros(np.broadcast(w, lo, nc, nh).shape, dtype=bool)
    better = np.zeros_like(worse)
    if rule.pairwise_alpha > 0:
        fired = pairwise_log_lr(w, lo, rule.beta_a) >= np.log(1 / rule.pairwise_alpha)
        worse |= fired & (w < lo)
        better |= fired & (w > lo)
    if rule.thumbs_alpha > 0:
        log_lr, difference = thumbs_log_lr(canary_ups, nc, champion_ups, nh, rule.thumbs_mixture_sd)
        enough = (nc >= rule.min_thumbs_per_arm) & (nh >= rule.min_thumbs_per_arm)
        fired = enough & (log_lr >= np.log(1 / rule.thumbs_alpha))
        worse |= fired & (difference < 0)
        better |= fired & (difference > 0)
    votes = w + lo + nc
    promote = better & ~worse & (votes >= rule.min_votes_promote) & rule.promote
    timed_out = np.asarray(elapsed_s) >= rule.max_duration.total_seconds()
    codes = np.where(worse, ROLLBACK, np.where(promote, PROMOTE, np.where(timed_out, STOP, CONTINUE)))
    return codes.astype(np.int8)


@dataclass(frozen=True)
class CanaryEvidence:
    """What the rule reads: the canary's decisive picks against the champion and both versions' thumbs, since
    the canary started, and how long it has run."""

    canary: str
    champion: str
    wins: int
    losses: int
    canary_ups: int
    canary_thumbs: int
    champion_ups: int
    champion_thumbs: int
    elapsed: timedelta


class Decision(BaseModel):
    """What the rule decided and why; ``evidence`` is what an automatic alias move records."""

    action: Action
    reason: str
    evidence: dict[str, Any]


def decide(rule: CanaryRule, evidence: CanaryEvidence) -> Decision:
    """The rule on one canary's evidence, with the statistics that led to it."""
    e = evidence
    code = int(decide_many(rule, e.wins, e.losses, e.canary_ups, e.canary_thumbs, e.champion_ups,
                           e.champion_thumbs, e.elapsed.total_seconds()))
    pair_lr = float(pairwise_log_lr(e.wins, e.losses, rule.beta_a))
    thumbs_lr, difference = (float(x) for x in thumbs_log_lr(e.canary_ups, e.canary_thumbs, e.champion_ups,
                                                             e.champion_thumbs, rule.thumbs_mixture_sd))
    stats = {
        "canary": e.canary, "champion": e.champion, "wins": e.wins, "losses": e.losses,
        "canary_ups": e.canary_ups, "canary_thumbs": e.canary_thumbs, "champion_ups": e.champion_ups,
        "champion_thumbs": e.champion_thumbs, "elapsed_s": e.elapsed.total_seconds(),
        "pairwise_log_lr": pair_lr, "pairwise_threshold": _threshold(rule.pairwise_alpha),
        "thumbs_log_lr": thumbs_lr, "thumbs_difference": difference,
        "thumbs_threshold": _threshold(rule.thumbs_alpha), "rule": rule.model_dump(mode="json"),
    }
    action = ACTIONS[code]
    reasons = {
        "rollback": "the canary is worse than the champion with confidence",
        "promote": "the canary is better than the champion with confidence",
        "stop": f"no decision within {rule.max_duration}",
        "continue": "not enough evidence yet",
    }
    return Decision(action=action, reason=f"{reasons[action]} (always-valid tests at alpha {rule.alpha:g}: picks "
                                          f"{e.wins}-{e.losses}, thumbs up {e.canary_ups}/{e.canary_thumbs} against "
                                          f"{e.champion_ups}/{e.champion_thumbs})", evidence=stats)


def _threshold(alpha: float) -> float | None:
    """The log-ratio a test must reach (None: the test is off)."""
    return float(np.log(1 / alpha)) if alpha > 0 else None


def evidence(session: Session, canary: str, champion: str, since: datetime, now: datetime) -> CanaryEvidence:
    """The canary's evidence from the store: accepted picks and thumbs on answers served since ``since``."""
    numbers = version_numbers(session, since=since)
    meeting = head_to_head(session, since=since).get((canary, champion))
    canary_thumbs = numbers[canary].thumbs_up if canary in numbers else None
    champion_thumbs = numbers[champion].thumbs_up if champion in numbers else None
    return CanaryEvidence(
        canary=canary, champion=champion,
        wins=meeting.wins if meeting else 0, losses=meeting.losses if meeting else 0,
        canary_ups=canary_thumbs.successes if canary_thumbs else 0,
        canary_thumbs=canary_thumbs.trials if canary_thumbs else 0,
        champion_ups=champion_thumbs.successes if champion_thumbs else 0,
        champion_thumbs=champion_thumbs.trials if champion_thumbs else 0,
        elapsed=now - since,
    )
