"""Promote and rollback are serialized, and an alias move commits with its audit row or not at all.

Each mover has an engine and an MLflow client of its own (as separate gateways and CLIs would),
on SQLite and PostgreSQL. Before the lock, two moves could read the same champion and each write
a row "from" it, so the audit trail no longer told which version replaced which (rollback follows it).
"""

from __future__ import annotations

import random
import threading
import traceback
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from feedback.db.session import make_engine, session_factory
from registry.model_versions import CHAMPION
from registry.promotion import Promotion, RegistryError

VERSIONS = 5
MOVERS = 4
MOVES_EACH = 6


@pytest.fixture
def model(tmp_path: Path) -> tuple[str, str]:
    """An MLflow store with a registered model of ``VERSIONS`` versions, version 1 champion (not audited)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "promotion-test"
    client.create_registered_model(name)
    for _ in range(VERSIONS):
        client.create_model_version(name, (tmp_path / "adapter").as_uri())
    client.set_registered_model_alias(name, CHAMPION, "1")
    return uri, name


def promotion(db_url: str, model: tuple[str, str]) -> Promotion:
    return Promotion(model[0], model[1], session_factory(make_engine(db_url)))


def audited_chain(registry: Promotion) -> list[tuple[str | None, str]]:
    return [(m.from_version, m.to_version) for m in reversed(registry.history()) if m.alias == CHAMPION]


def test_concurrent_promotions_and_rollbacks_leave_one_consistent_history(
    db_url: str, model: tuple[str, str]
) -> None:
    start = threading.Barrier(MOVERS)
    errors: list[str] = []  # tracebacks: which store refused, and where

    def mover(seed: int) -> None:
        registry, rng = promotion(db_url, model), random.Random(seed)
        start.wait()
        for _ in range(MOVES_EACH):
            try:
                if rng.random() < 0.3:
                    registry.rollback(f"mover-{seed}")
                else:
                    registry.promote(str(rng.randint(1, VERSIONS)), f"mover-{seed}")
            except RegistryError:
                pass  # already the champion, or nothing to roll back to: refused, nothing written
            except BaseException:
                errors.append(traceback.format_exc())

    threads = [threading.Thread(target=mover, args=(seed,)) for seed in range(MOVERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [], "\n".join(errors)
    registry = promotion(db_url, model)
    chain = audited_chain(registry)
    assert len(chain) >= MOVERS
    # Every move starts where the one before it ended, and the last one is where the alias is.
    assert [frm for frm, _ in chain] == ["1"] + [to for _, to in chain[:-1]]
    assert chain[-1][1] == str(registry.champion().version)


def test_a_registry_failure_leaves_no_audit_row(
    db_url: str, model: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = promotion(db_url, model)

    def refuse(*_args: object) -> None:
        raise MlflowException("registry down")

    monkeypatch.setattr(registry.client, "set_registered_model_alias", refuse)
    with pytest.raises(MlflowException):
        registry.promote("2", "ops")
    assert registry.history() == []
    assert str(registry.champion().version) == "1"


def test_a_failed_commit_moves_the_alias_back(db_url: str, model: tuple[str, str]) -> None:
    registry = promotion(db_url, model)

    @event.listens_for(registry.factory, "before_commit")
    def store_fails(_session: Session) -> None:
        raise RuntimeError("the store went away at commit")

    with pytest.raises(RuntimeError, match="went away"):
        registry.promote("3", "ops")
    event.remove(registry.factory, "before_commit", store_fails)
    assert str(registry.champion().version) == "1"
    assert registry.history() == []
    registry.promote("3", "ops")
    assert audited_chain(registry) == [("1", "3")]


def test_a_sqlite_mlflow_store_is_put_in_wal_mode(db_url: str, model: tuple[str, str]) -> None:
    """Readers of the aliases (every gateway, every few seconds) must not block the writer that moves one."""
    import sqlite3
    from contextlib import closing

    promotion(db_url, model)
    path = model[0].removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
