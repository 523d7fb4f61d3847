"""A real MLflow store with a registered model of a few versions, and the store's ``Promotion`` over it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from feedback.db.session import make_engine, session_factory
from registry.promotion import Promotion

VERSIONS = 4


def registered_model(tmp_path: Path, versions: int = VERSIONS) -> tuple[str, str]:
    """An MLflow SQLite store holding ``versions`` base-model versions of one registered model, no alias set."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "canary-test"
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, (tmp_path / "adapter").as_uri(), tags={"adapter": "none"})
    return uri, name


def promotions(db_url: str, model: tuple[str, str]) -> Callable[[], Promotion]:
    """Makes a fresh ``Promotion`` (own engine, own MLflow client) per call, as separate processes would have."""

    def make() -> Promotion:
        return Promotion(model[0], model[1], session_factory(make_engine(db_url)))

    return make


@pytest.fixture
def promotion(db_url: str, tmp_path: Path) -> Callable[[], Promotion]:
    return promotions(db_url, registered_model(tmp_path))
