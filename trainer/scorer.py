"""The scorer: the current reward model scores answers as they are stored, beside the worker.

The worker imports no torch, so it reads the reward model's scores from ``reward_scores``
(``feedback/filters/reward_scores.py``), where reliability counts the model as one more
rater and the consensus filter uses the score as a feature. After each round the trainer
replaces that table with the new reward model's scores of the voted answers; without this
process, answers served after the round would have no score until the next one.

Which model: the one whose scores the table holds (the run the trainer published last, with
the held-out accuracy it measured), downloaded from that run's ``reward_model`` artifact
(``trainer/reward_artifact.py``). The table then always holds one model's scale: when the
trainer publishes a new run, the scorer switches to that run's model. If the race of a
scorer write with a publish ever leaves two runs' rows, the run with fewer rows (the
scorer's few, never the trainer's publish) is deleted at the next step.

What: completions younger than ``max_age_s`` with no score, newest first, ``batch`` at a
time (feedback on older answers is expired by the integrity filter, so their scores would
never be read).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Completion, RewardScore
from feedback.db.session import transaction
from feedback.events import utcnow
from feedback.store import insert_ignoring_conflicts
from trainer.config import TrainerSettings
from trainer.registry import Registry
from trainer.reward import RewardModel
from trainer.reward_artifact import download_reward_model

log = logging.getLogger(__name__)


@dataclass
class ScoredBatch:
    """One step's work: answers scored and the seconds the model took for them."""

    answers: int
    seconds: float


class Scorer:
    """Scores new completions with the reward model of the run whose scores ``reward_scores`` holds."""

    def __init__(self, settings: TrainerSettings, factory: sessionmaker[Session], batch: int = 64,
                 max_age_s: float = 7 * 24 * 3600) -> None:
        self.registry = Registry(settings, factory)
        self.factory = factory
        self.batch = batch
        self.max_age_s = max_age_s
        self._run: tuple[str, float] | None = None  # (run id, held-out accuracy) of the loaded model
        self._model: RewardModel | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="flywheel-scorer-")

    def _current_run(self, session: Session) -> tuple[str, float] | None:
        """The run with the most rows in the table (the trainer's publish); other runs' rows are deleted."""
        runs = session.execute(select(RewardScore.run_id, func.count(), func.min(RewardScore.model_accuracy))
                               .group_by(RewardScore.run_id).order_by(func.count().desc(), RewardScore.run_id)).all()
        if not runs:
            return None
        if len(runs) > 1:
            session.execute(delete(RewardScore).where(RewardScore.run_id != runs[0][0]))
        return runs[0][0], float(runs[0][2])

    def _load(self, run: tuple[str, float]) -> RewardModel | None:
        if self._run != run:
            destination = Path(self._workdir.name) / run[0]
            destination.mkdir(parents=True, exist_ok=True)
            self._model = download_reward_model(self.registry.client, run[0], destination)
            self._run = run
            if self._model is None:
                log.warning("run %s logged no reward model: answers wait for a run that did", run[0])
            else:
                log.info("scoring with the reward model of run %s (held-out accuracy %.3f)", *run)
        return self._model

    def step(self) -> ScoredBatch:
        """Score up to ``batch`` answers that have none; 0 when there is no model or nothing to score."""
        with transaction(self.factory) as session:
            run = self._current_run(session)
        model = self._load(run) if run is not None else None
        if run is None or model is None:
            return ScoredBatch(0, 0.0)
        scored = select(RewardScore.response_id)
        with self.factory() as session:
            answers = session.execute(
                select(Completion.response_id, Completion.messages, Completion.answer)
                .where(Completion.created_at >= utcnow() - timedelta(seconds=self.max_age_s),
                       Completion.response_id.not_in(scored))
                .order_by(Completion.created_at.desc(), Completion.response_id).limit(self.batch)
            ).all()
        if not answers:
            return ScoredBatch(0, 0.0)
        started = time.perf_counter()
        scores = model.mean([a.messages for a in answers], [a.answer for a in answers])
        seconds = time.perf_counter() - started
        scored_at = utcnow()
        with transaction(self.factory) as session:
            insert_ignoring_conflicts(session, RewardScore, [
                {"response_id": a.response_id, "score": float(s), "run_id": run[0], "model_accuracy": run[1],
                 "scored_at": scored_at} for a, s in zip(answers, scores, strict=True)], key=("response_id",))
        return ScoredBatch(len(answers), seconds)

    def run(self, stop: threading.Event, poll_s: float) -> None:
        """Score until ``stop``; wait ``poll_s`` whenever nothing was left to score."""
        done, busy = 0, 0.0
        while not stop.is_set():
            result = self.step()
            done, busy = done + result.answers, busy + result.seconds
            if result.answers:
                log.info("scored %d answers (%d in all, %.1f answers/s of model time)", result.answers, done,
                         done / busy if busy else 0.0)
            if result.answers < self.batch:
                stop.wait(poll_s)

    def close(self) -> None:
        self._workdir.cleanup()
