"""The scorer: the reward model the trainer published scores answers stored after the round, for the worker."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from feedback.db.models import RewardScore
from feedback.db.session import transaction
from tests.trainer.conftest import Store, response_id
from trainer.config import TrainerSettings
from trainer.registry import Registry
from trainer.reward import RewardModel, default_backbone
from trainer.reward_artifact import log_reward_model
from trainer.scorer import Scorer


@pytest.fixture(scope="module")
def reward_model() -> RewardModel:
    """The packaged encoder with a fresh score head: untrained, but a deterministic function of the text."""
    torch.manual_seed(0)
    backbone = default_backbone()
    model = AutoModelForSequenceClassification.from_pretrained(str(backbone), num_labels=1)
    return RewardModel([model], AutoTokenizer.from_pretrained(str(backbone)), 128)


def publish(factory: sessionmaker[Session], run_id: str, accuracy: float, response_ids: list[str]) -> None:
    """As a round does (``trainer/reward_scores.py``): the table's only rows become this run's."""
    with transaction(factory) as session:
        session.execute(delete(RewardScore))
        session.add_all(RewardScore(response_id=r, score=0.0, run_id=run_id, model_accuracy=accuracy)
                        for r in response_ids)


def scores(factory: sessionmaker[Session]) -> dict[str, tuple[float, str, float]]:
    with factory() as session:
        return {r.response_id: (r.score, r.run_id, r.model_accuracy) for r in session.scalars(select(RewardScore))}


def test_new_answers_are_scored_by_the_published_runs_model(
        settings: TrainerSettings, factory: sessionmaker[Session], store: Store, reward_model: RewardModel) -> None:
    registry = Registry(settings, factory)
    with_model = registry.client.create_run(registry.experiment_id()).info.run_id
    log_reward_model(registry.client, with_model, reward_model)
    without_model = registry.client.create_run(registry.experiment_id()).info.run_id
    answers = {store.completion(response_id(), f"question {n}?", f"answer number {n}"): n for n in range(10)}
    old, new = list(answers)[:3], list(answers)[3:]
    scorer = Scorer(settings, factory, batch=4)
    try:
        assert scorer.step().answers == 0  # no round has published scores: no model yet

        publish(factory, without_model, 0.9, old)
        assert scorer.step().answers == 0  # that run logged no model: nothing is scored with another model
        assert set(scores(factory)) == set(old)

        publish(factory, with_model, 0.85, old)
        while scorer.step().answers:
            pass
        got = scores(factory)
        assert set(got) == set(answers)
        expected = reward_model.mean([[{"role": "user", "content": f"question {answers[r]}?"}] for r in new],
                                     [f"answer number {answers[r]}" for r in new])
        assert [got[r][0] for r in new] == pytest.approx(expected.tolist(), abs=1e-4)
        assert {got[r][1:] for r in new} == {(with_model, 0.85)}  # one model's scale, its measured accuracy

        with transaction(factory) as session:  # a write that raced a publish: the smaller run's rows go
            session.execute(delete(RewardScore).where(RewardScore.response_id == new[0]))
            session.add(RewardScore(response_id=new[0], score=1.0, run_id=without_model, model_accuracy=0.9))
        scorer.step()
        assert {run for _, run, _ in scores(factory).values()} == {with_model}
    finally:
        scorer.close()
