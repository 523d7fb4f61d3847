"""The model registry: versions and their promotion state, in MLflow, with an audit trail.

Promotion state is MLflow aliases (MLflow 3 deprecates stages): ``champion`` serves users,
``challenger`` is the latest candidate that beat the champion on held-out feedback. MLflow
keeps no alias history, so every alias move also writes an ``AliasMove`` row in the store
within the same call; rollback reads that table.

Naming, in one place:
- registered model: ``settings.registered_model`` (default ``flywheel-policy``);
- version 1 is the base model alone, from the run ``bootstrap-base-model`` with the artifact
  ``base_model.json``; its tags are ``adapter="none"`` and ``base_model=<path>``;
- trained versions carry ``adapter="adapter"`` (the run artifact holding the LoRA folder).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import AliasMove
from feedback.db.session import transaction
from feedback.model_versions import ADAPTER_TAG, CHALLENGER, CHAMPION, NO_ADAPTER
from trainer.config import TrainerSettings

BOOTSTRAP_RUN_NAME = "bootstrap-base-model"
BASE_MODEL_ARTIFACT = "base_model.json"
BASE_MODEL_TAG = "base_model"
SYSTEM_ACTOR = "system"


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


class Registry:
    """Versions, aliases and the alias audit trail of one registered model."""

    def __init__(self, settings: TrainerSettings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.factory = factory
        self.name = settings.registered_model

    @cached_property
    def client(self) -> MlflowClient:
        uri = self.settings.resolved_mlflow_uri
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def experiment_id(self) -> str:
        """The trainer's experiment, created on first use with the configured artifact root."""
        name = self.settings.mlflow_experiment
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        return self.client.create_experiment(name, artifact_location=self.settings.resolved_artifact_root)

    def _ensure_registered_model(self) -> None:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(
                self.name, description="Flywheel policy: the base model plus LoRA adapters trained on feedback."
            )

    def version(self, version: str) -> ModelVersion:
        return self.client.get_model_version(self.name, version)

    def alias_version(self, alias: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

    def champion(self) -> ModelVersion:
        champion = self.alias_version(CHAMPION)
        if champion is None:
            raise RegistryError(f"{self.name!r} has no champion: run the bootstrap (Registry.ensure_bootstrap) first")
        return champion

    def ensure_bootstrap(self) -> str:
        """Make sure a champion exists: version 1 is the base model with no adapter.

        Idempotent, and safe after a crash between creating the version and setting the alias:
        an existing base-model version for the same base model is reused.
        """
        self._ensure_registered_model()
        current = self.alias_version(CHAMPION)
        if current is not None:
            return str(current.version)
        base = str(self.settings.resolved_base_model)
        existing = [
            v
            for v in self.client.search_model_versions(f"name='{self.name}'")
            if v.tags.get(ADAPTER_TAG) == NO_ADAPTER and v.tags.get(BASE_MODEL_TAG) == base
        ]
        version = str(min(int(v.version) for v in existing)) if existing else self._register_base(base)
        self._move(CHAMPION, version, action="bootstrap", actor=SYSTEM_ACTOR, reason="initial champion: the base model")
        return version

    def _register_base(self, base: str) -> str:
        run = self.client.create_run(self.experiment_id(), run_name=BOOTSTRAP_RUN_NAME)
        run_id = run.info.run_id
        try:
            config_file = Path(base) / "config.json"
            description = {
                "base_model": base,
                "adapter": None,
                "config": json.loads(config_file.read_text()) if config_file.exists() else None,
            }
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / BASE_MODEL_ARTIFACT
                path.write_text(json.dumps(description, indent=2))
                self.client.log_artifact(run_id, str(path))
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        except BaseException:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        return self.register_candidate(run_id, BASE_MODEL_ARTIFACT, {ADAPTER_TAG: NO_ADAPTER, BASE_MODEL_TAG: base})

    def register_candidate(self, run_id: str, adapter_artifact_path: str, tags: dict[str, str]) -> str:
        """A new version from a run's artifact; returns its version number. Moves no alias."""
        self._ensure_registered_model()
        source = f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/{adapter_artifact_path}"
        version = self.client.create_model_version(self.name, source, run_id=run_id, tags=tags)
        return str(version.version)

    def delete_version(self, version: str) -> None:
        """Undo a registration whose round failed afterwards; refuses a version holding an alias."""
        if self.version(version).aliases:
            raise RegistryError(f"version {version} holds an alias; move it before deleting the version")
        self.client.delete_model_version(self.name, version)

    def set_challenger(self, version: str, actor: str = "trainer", reason: str | None = None) -> None:
        self._move(CHALLENGER, version, action="challenger", actor=actor, reason=reason)

    def promote(self, version: str, actor: str, reason: str | None = None) -> None:
        """Make ``version`` the champion (what users are served)."""
        self.version(version)  # a clear MLflow error for an unknown version, before any write
        champion = self.alias_version(CHAMPION)
        if champion is not None and str(champion.version) == str(version):
            raise RegistryError(f"version {version} is already the champion")
        self._move(CHAMPION, str(version), action="promote", actor=actor, reason=reason)

    def rollback(self, actor: str, reason: str | None = None) -> str:
        """Return the champion to the version it replaced; returns that version.

        The audit trail is read like a stack: the newest promotion *to* the current champion
        names the version it replaced. Rollback rows are skipped, so rolling back twice walks
        two steps back instead of undoing the first rollback.
        """
        current = str(self.champion().version)
        with self.factory() as session:
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
        self._move(CHAMPION, move.from_version, action="rollback", actor=actor, reason=reason)
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

    def _move(self, alias: str, version: str, action: str, actor: str, reason: str | None) -> None:
        """Move an alias and write its audit row together.

        The row is flushed first (so a store error stops the move) and committed only after
        MLflow accepted the move (so a registry error leaves no row for a move that never happened).
        """
        previous = self.alias_version(alias)
        with transaction(self.factory) as session:
            session.add(
                AliasMove(
                    model_name=self.name,
                    alias=alias,
                    action=action,
                    from_version=str(previous.version) if previous is not None else None,
                    to_version=str(version),
                    actor=actor,
                    reason=reason,
                )
            )
            session.flush()
            self.client.set_registered_model_alias(self.name, alias, str(version))
