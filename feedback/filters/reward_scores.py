"""The reward model's scores as the reliability filter reads them: from the table the trainer writes.

The worker imports no torch, so it never runs the reward model; after each round the trainer
scores the answers that received votes and replaces ``reward_scores`` (``trainer/reward_scores.py``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import RewardScore
from feedback.filters.reliability import RewardJudge


class StoredRewardScores:
    """``RewardScores`` backed by the ``reward_scores`` table, reloaded only when the trainer wrote new ones.

    Each call costs one aggregate query (newest ``scored_at`` and row count); the scores
    themselves are read again only when those change, i.e. once per training round.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._version: tuple[datetime | None, int] | None = None
        self._judge: RewardJudge | None = None

    def __call__(self) -> RewardJudge | None:
        with self._sessions() as session:
            newest, rows, accuracy = session.execute(
                select(func.max(RewardScore.scored_at), func.count(), func.min(RewardScore.model_accuracy))
            ).one()
            if (newest, rows) != self._version:
                scores = {r: s for r, s in session.execute(select(RewardScore.response_id, RewardScore.score))}
                self._judge = RewardJudge(scores, accuracy) if scores else None
                self._version = (newest, rows)
        return self._judge
