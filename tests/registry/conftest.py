"""A real MLflow store with a registered model of a few versions, and the store's ``Promotion`` over it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from feedback.db.session import make_engine, session_factory
from registry.promotion import Promotion

VERSIONS = 4


@pytest.fixture
def model(tmp_path: Path) -> tuple[str, str]:
    """An MLflow SQLite store holding ``VERSIONS`` versions of one registered model, no alias set yet."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "canary-test"
    client.create_registered_model(name)
    for _ in range(VERSIONS):
        client.create_model_version(name, (tmp_path / "adapter").as_uri(), tags={"adapter": "none"})
    return uri, name


@pytest.fixture
def promotion(db_url: str, model: tuple[str, str]) -> Callable[[], Promotion]:
    """A fresh ``Promotion`` (own engine, own MLflow client) on this test's store and registry, per call."""

    def make() -> Promotion:
        return Promotion(model[0], model[1], session_factory(make_engine(db_url)))

    return make
