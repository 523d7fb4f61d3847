"""How each version is doing with real users, from the store: accepted feedback and served answers only.

The numbers ops judge a canary by, and the evidence the canary's decision rule reads:

- **thumbs-up rate** per version: the share of ``up`` among accepted thumbs on its answers,
  with a Wilson score interval (right near 0 and 1 and for few votes, where the normal
  interval is not);
- **pairwise win rate** of one version against another, from accepted picks between their
  answers in the same pair (a canary's pairs pit it against the champion): wins over decisive
  picks, with a Wilson interval; ties and "both bad" are counted beside it, not in it;
- **answers, mean answer length and mean latency** per version, from every answer it served (not
  the ones constitutional revisions write, ``CONSTITUTION_VERSION``).

Only accepted feedback of end users counts: quarantined events live in another table, a rater
condemned later has their accepted votes moved out, so the numbers follow the filters' verdicts,
and machine feedback (an AI judge's verdicts, ``feedback.source``) is no user's opinion. Votes are
counted, not weighted by the filters' reliability weights: a vote is one Bernoulli trial, which is
what the intervals and the sequential test assume. Gateway-side error rates live in Prometheus only
(``flywheel_chat_errors_total``): a failed request leaves no row in the store.

Torch-free SQLAlchemy 2 queries; the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from scipy.stats import norm
from sqlalchemy import Integer, case, func, select
from sqlalchemy.orm import Session, aliased

from feedback.db.models import Completion, Feedback
from feedback.events import CONSTITUTION_VERSION, HUMAN
from feedback.store import as_utc


@dataclass(frozen=True)
class Proportion:
    """``successes`` of ``trials`` with a Wilson score interval at ``confidence`` (None without trials)."""

    successes: int
    trials: int
    estimate: float | None
    low: float | None
    high: float | None
    confidence: float


def wilson(successes: int, trials: int, confidence: float = 0.95) -> Proportion:
    """The Wilson score interval of a binomial proportion (Wilson 1927)."""
    if trials == 0:
        return Proportion(0, 0, None, None, None, confidence)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Proportion(successes, trials, p, max(0.0, centre - half), min(1.0, centre + half), confidence)


@dataclass(frozen=True)
class VersionLive:
    """One version's live numbers (``since``: only answers served from then on)."""

    version: str
    answers: int
    mean_answer_chars: float | None
    mean_latency_ms: float | None
    thumbs_up: Proportion


@dataclass(frozen=True)
class HeadToHead:
    """Accepted picks between ``version``'s and ``against``'s answers in the same pair."""

    version: str
    against: str
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: Proportion


def version_numbers(session: Session, since: datetime | None = None,
                    confidence: float = 0.95) -> dict[str, VersionLive]:
    """Every version with answers (since ``since``): answers, mean length and latency, thumbs-up rate."""
    answers = select(
        Completion.model_version, func.count(), func.avg(func.length(Completion.answer)),
        func.avg(Completion.latency_ms),
    ).where(Completion.model_version != CONSTITUTION_VERSION).group_by(Completion.model_version)
    thumbs = (
        select(Completion.model_version, func.count(),
               func.sum(case((Feedback.rating == "up", 1), else_=0)).cast(Integer))
        .join(Completion, Feedback.response_id == Completion.response_id)
        .where(Feedback.type == "thumbs", Feedback.source == HUMAN)
        .group_by(Completion.model_version)
    )
    if since is not None:
        answers = answers.where(Completion.created_at >= since)
        thumbs = thumbs.where(Completion.created_at >= since)
    votes = {version: (int(n), int(ups or 0)) for version, n, ups in session.execute(thumbs)}
    numbers = {}
    for version, n, chars, latency in session.execute(answers):
        trials, ups = votes.get(version, (0, 0))
        numbers[version] = VersionLive(
            version=version, answers=int(n),
            mean_answer_chars=float(chars) if chars is not None else None,
            mean_latency_ms=float(latency) if latency is not None else None,
            thumbs_up=wilson(ups, trials, confidence),
        )
    return numbers


def head_to_head(session: Session, since: datetime | None = None,
                 confidence: float = 0.95) -> dict[tuple[str, str], HeadToHead]:
    """Every ordered pair of different versions met in a pair, with the first's picks against the second."""
    side_a, side_b = aliased(Completion), aliased(Completion)
    query = (
        select(side_a.model_version, side_b.model_version, Feedback.choice, func.count())
        .join(side_a, (side_a.pair_id == Feedback.pair_id) & side_a.response_id.endswith("_a", autoescape=True))
        .join(side_b, (side_b.pair_id == Feedback.pair_id) & side_b.response_id.endswith("_b", autoescape=True))
        .where(Feedback.type == "pairwise", Feedback.source == HUMAN, side_a.model_version != side_b.model_version)
        .group_by(side_a.model_version, side_b.model_version, Feedback.choice)
    )
    if since is not None:
        query = query.where(side_a.created_at >= since)
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for version_a, version_b, choice, n in session.execute(query):
        picked = {"a": "win", "b": "loss"}.get(choice or "", choice or "")  # A's view; B's is the mirror
        mirrored = {"win": "loss", "loss": "win"}.get(picked, picked)
        counts[(version_a, version_b)][picked] += int(n)
        counts[(version_b, version_a)][mirrored] += int(n)
    return {
        (version, against): HeadToHead(
            version=version, against=against, wins=c["win"], losses=c["loss"], ties=c["tie"], both_bad=c["both_bad"],
            win_rate=wilson(c["win"], c["win"] + c["loss"], confidence),
        )
        for (version, against), c in counts.items()
    }


@dataclass(frozen=True)
class ServedAnswer:
    """One recorded answer: which version gave it, to which app's user, when."""

    response_id: str
    app_id: int
    model_version: str
    created_at: datetime


def last_answer(session: Session, user: str, at: datetime) -> ServedAnswer | None:
    """The last answer recorded for end user ``user`` at or before ``at`` (any app): the fact beside the rule."""
    row = session.scalars(
        select(Completion).where(Completion.user_id == user, Completion.created_at <= at)
        .order_by(Completion.created_at.desc()).limit(1)
    ).first()
    if row is None:
        return None
    return ServedAnswer(row.response_id, row.app_id, row.model_version, as_utc(row.created_at))
