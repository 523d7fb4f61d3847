"""After each round, the new reward model scores the answers that received votes, for the worker's reliability filter.

The worker never runs the model (``feedback`` imports no torch); it reads ``reward_scores``
(``feedback/filters/reward_scores.py``) and counts the reward model as one more rater. The
table holds the scores of one model, the newest: each round replaces them in one transaction,
so the worker never mixes two models' scales. Newest voted answers first, up to
``TrainConfig.reward_score_limit``: old votes rarely decide a rater's reliability any more.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Completion, Feedback, RewardScore
from feedback.db.session import transaction
from feedback.events import utcnow
from trainer.policy import ProgressFn
from trainer.reward import RewardModel

_CHUNK = 256  # answers scored between two progress updates; also rows per INSERT


def publish_reward_scores(
    model: RewardModel,
    accuracy: float,
    factory: sessionmaker[Session],
    run_id: str,
    limit: int,
    progress: ProgressFn | None = None,
) -> int:
    """Score the ``limit`` newest answers with accepted votes (thumbs on them, or pairs they are part of) and
    make those scores the table's only rows, with the model's held-out ``accuracy``; returns how many."""
    voted = or_(
        Completion.response_id.in_(select(Feedback.response_id).where(Feedback.response_id.is_not(None))),
        Completion.pair_id.in_(select(Feedback.pair_id).where(Feedback.pair_id.is_not(None))),
    )
    with factory() as session:
        answers = session.execute(
            select(Completion.response_id, Completion.messages, Completion.answer)
            .where(voted)
            .order_by(Completion.created_at.desc(), Completion.response_id)
            .limit(limit)
        ).all()
    rows = []
    scored_at = utcnow()
    for start in range(0, len(answers), _CHUNK):
        chunk = answers[start : start + _CHUNK]
        scores = model.mean([a.messages for a in chunk], [a.answer for a in chunk])
        rows += [{"response_id": a.response_id, "score": float(s), "run_id": run_id,
                  "model_accuracy": accuracy, "scored_at": scored_at}
                 for a, s in zip(chunk, scores, strict=True)]
        if progress:
            progress("reward-scores", len(rows), len(answers))
    with transaction(factory) as session:
        session.execute(delete(RewardScore))
        for start in range(0, len(rows), _CHUNK):
            session.execute(insert(RewardScore), rows[start : start + _CHUNK])
    return len(rows)
