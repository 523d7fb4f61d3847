"""Which model version serves users: MLflow aliases, moved with an audit trail.

Promotion state is MLflow aliases (MLflow 3 deprecates stages): ``champion`` serves users,
``challenger`` is the latest candidate that passed the trainer's checks. MLflow keeps no
alias history, so every alias move also writes an ``AliasMove`` row in the store within the
same call; rollback reads that table.

Moves are serialized across processes by a lock in the store (PostgreSQL's advisory lock,
SQLite's write lock) taken before the current alias is read, so two promotions, or a promotion
and a rollback, cannot both start from the same champion and leave a history that skips a
version. The alias move and its row commit together: the row waits in the transaction while
MLflow moves the alias; a registry failure rolls it back, a failed commit moves the alias back.

Torch-free and below both users: the trainer marks challengers, ops promote and roll back
from the CLI or the gateway's admin endpoints, and all of them go through this one class.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy import false, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import AliasMove
from registry.model_versions import CHALLENGER, CHAMPION

log = logging.getLogger(__name__)

Chooser = Callable[[Session, ModelVersion | None], str]
"""Picks the version an alias moves to from its current holder, under the lock; raises RegistryError to refuse."""


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: list[str]
    tags: dict[str, str]
    metrics: dict[str, float]
    run_id: str | None
    created_at: datetime


class Promotion:
    """The aliases of one registered model and their audit trail."""

    def __init__(self, tracking_uri: str, name: str, factory: sessionmaker[Session]) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.name = name
        self.factory = factory

    def version(self, version: str) -> ModelVersion:
        try:
            return self.client.get_model_version(self.name, version)
        except MlflowException as exc:
            raise RegistryError(f"{self.name!r} has no version {version!r}") from exc

    def alias_version(self, alias: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

    def champion(self) -> ModelVersion:
        champion = self.alias_version(CHAMPION)
        if champion is None:
            raise self._no_champion()
        return champion

    def _no_champion(self) -> RegistryError:
        return RegistryError(f"{self.name!r} has no champion yet: start the gateway once (flywheel serve) first")

    def set_challenger(self, version: str, actor: str = "trainer", reason: str | None = None) -> None:
        self._move(CHALLENGER, version, action="challenger", actor=actor, reason=reason)

    def promote(self, version: str, actor: str, reason: str | None = None) -> None:
        """Make ``version`` the champion (what users are served)."""
        self.version(version)  # a clear MLflow error for an unknown version, before any write

        def unless_champion(_session: Session, champion: ModelVersion | None) -> str:
            if champion is not None and str(champion.version) == str(version):
                raise RegistryError(f"version {version} is already the champion")
            return str(version)

        self._move(CHAMPION, unless_champion, action="promote", actor=actor, reason=reason)

    def rollback(self, actor: str, reason: str | None = None) -> str:
        """Return the champion to the version it replaced; returns that version.

        The audit trail is read like a stack: the newest promotion *to* the current champion
        names the version it replaced. Rollback rows are skipped, so rolling back twice walks
        two steps back instead of undoing the first rollback.
        """
        return self._move(CHAMPION, self._replaced, action="rollback", actor=actor, reason=reason)

    def _replaced(self, session: Session, champion: ModelVersion | None) -> str:
        """The version the current champion replaced (rollback's target), read under the lock."""
        if champion is None:
            raise self._no_champion()
        current = str(champion.version)
        move = session.scalars(
            select(AliasMove)
            .where(
                AliasMove.model_name == self.name,
                AliasMove.alias == CHAMPION,
                AliasMove.to_version == current,
                AliasMove.action != "rollback",
            )
            .order_by(AliasMove.at.desc(), AliasMove.id.desc())
            .limit(1)
        ).first()
        if move is None or move.from_version is None:
            raise RegistryError(
                f"nothing to roll back to: version {current} of {self.name!r} has been champion since "
                f"{'the bootstrap' if move is not None else 'before the audit trail began'}"
            )
        return move.from_version

    def history(self, limit: int | None = None) -> list[AliasMove]:
        """Alias moves of this model, newest first."""
        with self.factory() as session:
            query = (
                select(AliasMove)
                .where(AliasMove.model_name == self.name)
                .order_by(AliasMove.at.desc(), AliasMove.id.desc())
            )
            return list(session.scalars(query.limit(limit) if limit else query))

    def list_versions(self) -> list[VersionInfo]:
        """Every version, oldest first, with its aliases, tags and its run's metrics."""
        try:
            aliases_by_version: dict[str, list[str]] = {}
            for alias, version in self.client.get_registered_model(self.name).aliases.items():
                aliases_by_version.setdefault(str(version), []).append(alias)
        except MlflowException:
            return []
        infos = []
        for v in self.client.search_model_versions(f"name='{self.name}'"):
            metrics: dict[str, Any] = self.client.get_run(v.run_id).data.metrics if v.run_id else {}
            infos.append(
                VersionInfo(
                    version=str(v.version),
                    aliases=sorted(aliases_by_version.get(str(v.version), [])),
                    tags=dict(v.tags),
                    metrics=dict(metrics),
                    run_id=v.run_id,
                    created_at=datetime.fromtimestamp(v.creation_timestamp / 1000, tz=UTC),
                )
            )
        return sorted(infos, key=lambda i: int(i.version))

    def _move(self, alias: str, target: str | Chooser, action: str, actor: str, reason: str | None) -> str:
        """Move an alias and write its audit row together, one move at a time; returns the version moved to.

        Under the lock: read the alias, choose the ``target`` (a version, or a function of the current
        holder), write the row (flushed, so a store error stops the move), move the alias, commit. A
        registry error rolls the row back; a commit that fails after MLflow moved the alias moves it back.
        """
        with self._locked() as session:
            previous = self.alias_version(alias)
            version = target if isinstance(target, str) else target(session, previous)
            session.add(
                AliasMove(
                    model_name=self.name,
                    alias=alias,
                    action=action,
                    from_version=str(previous.version) if previous is not None else None,
                    to_version=version,
                    actor=actor,
                    reason=reason,
                )
            )
            session.flush()
            self.client.set_registered_model_alias(self.name, alias, version)
            try:
                session.commit()
            except BaseException:
                self._put_back(alias, previous)
                raise
        return version

    def _put_back(self, alias: str, previous: ModelVersion | None) -> None:
        """Undo an alias move whose audit row could not be committed (still under the lock)."""
        try:
            if previous is None:
                self.client.delete_registered_model_alias(self.name, alias)
            else:
                self.client.set_registered_model_alias(self.name, alias, str(previous.version))
        except MlflowException:
            log.exception("could not move %s@%s back to %s after its audit row failed: the alias and its history "
                          "disagree", self.name, alias, previous.version if previous is not None else "nothing")

    @contextmanager
    def _locked(self) -> Iterator[Session]:
        """A session holding this model's alias lock until it commits or closes (closing rolls back).

        PostgreSQL: a transaction-level advisory lock keyed by the model name. SQLite has one writer
        at a time: a write that touches no row still takes the database's write lock, and the
        connection's busy timeout makes a second mover wait for it.
        """
        with self.factory() as session:
            if session.get_bind().dialect.name == "postgresql":
                session.execute(select(func.pg_advisory_xact_lock(self._lock_key)))
            else:
                session.execute(update(AliasMove).where(false()).values(reason=None))
            yield session

    @property
    def _lock_key(self) -> int:
        """A signed 64-bit advisory-lock key (PostgreSQL's bigint), one per registered model."""
        digest = hashlib.sha256(f"flywheel.promotion:{self.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)
