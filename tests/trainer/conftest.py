"""Fixtures for the trainer: a tiny model, a migrated store with feedback, an MLflow sqlite store."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import App, Completion, Feedback
from feedback.db.session import make_engine, session_factory, transaction, upgrade
from trainer.base_model import build_tiny_model
from trainer.config import TrainerSettings
from trainer.pairs import EventKey

_ids = itertools.count()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def make_settings(data_dir: Path, base_model: Path) -> TrainerSettings:
    return TrainerSettings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        base_model=base_model,
        database_url=f"sqlite:///{data_dir / 'flywheel.db'}",
        mlflow_tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}",
        registered_model="test-policy",
    )


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path) -> TrainerSettings:
    settings = make_settings(tmp_path / "data", tiny_model)
    upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture
def factory(settings: TrainerSettings) -> sessionmaker[Session]:
    return session_factory(make_engine(settings.resolved_database_url))


class Store:
    """Writes completions and feedback the way the worker would."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        with transaction(factory) as session:
            name = f"app-{next(_ids)}"  # several apps per store: keys must differ too
            app = App(name=name, key_hash=hashlib.sha256(name.encode()).hexdigest(), key_prefix="k")
            session.add(app)
            session.flush()
            self.app_id = app.id

    def completion(self, response_id: str, prompt: str, answer: str, pair_id: str | None = None) -> str:
        with transaction(self.factory) as session:
            session.add(
                Completion(
                    response_id=response_id,
                    event_id=f"evt_c_{response_id}",
                    pair_id=pair_id,
                    app_id=self.app_id,
                    model_version="1",
                    messages=[{"role": "user", "content": prompt}],
                    prompt_hash=hashlib.sha256(prompt.encode()).hexdigest(),
                    answer=answer,
                    params={},
                    latency_ms=1.0,
                    created_at=datetime.now(UTC),
                )
            )
        return response_id

    def pair(
        self, prompt: str, answer_a: str, answer_b: str, *choices: str, weight: float = 1.0,
        event_ids: Sequence[str | None] = (),
    ) -> list[str]:
        """A pair ``pair_<root>`` with its two completions and one vote per choice; returns the event ids.

        ``event_ids`` names the votes (in order) instead of fresh ids: another app's ids, say.
        """
        root = hashlib.md5(f"{prompt}{next(_ids)}".encode()).hexdigest()
        self.completion(f"resp_{root}_a", prompt, answer_a, f"pair_{root}")
        self.completion(f"resp_{root}_b", prompt, answer_b, f"pair_{root}")
        names = [*event_ids, *[None] * len(choices)]
        return [
            self.feedback("pairwise", pair_id=f"pair_{root}", choice=c, weight=weight, event_id=name)
            for c, name in zip(choices, names, strict=False)
        ]

    def key(self, event_id: str) -> EventKey:
        """This app's key for one of its event ids."""
        return EventKey(self.app_id, event_id)

    def thumbs(self, response_id: str, rating: str, weight: float = 1.0) -> str:
        return self.feedback("thumbs", response_id=response_id, rating=rating, weight=weight)

    def feedback(self, type_: str, weight: float = 1.0, event_id: str | None = None, **fields: str) -> str:
        event_id = event_id or f"evt_f_{next(_ids)}"
        with transaction(self.factory) as session:
            session.add(
                Feedback(
                    event_id=event_id,
                    type=type_,
                    app_id=self.app_id,
                    user_id="user",
                    weight=weight,
                    created_at=datetime.now(UTC),
                    **fields,
                )
            )
        return event_id


@pytest.fixture
def store(factory: sessionmaker[Session]) -> Store:
    return Store(factory)


def response_id() -> str:
    return f"resp_{hashlib.md5(str(next(_ids)).encode()).hexdigest()}"


@pytest.fixture
def new_response_id() -> Callable[[], str]:
    return response_id
