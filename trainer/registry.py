"""The model registry, the trainer's side: the experiment, the base version, new versions.

Alias moves (champion, challenger, rollback) and their audit trail are ``registry.promotion``,
shared with the gateway's admin endpoints.

Naming, in one place:
- registered model: ``settings.registered_model`` (default ``flywheel-policy``);
- version 1 is the base model alone, from the run ``bootstrap-base-model`` with the artifact
  ``base_model.json``; its tags are ``adapter="none"`` and ``base_model=<path>``;
- trained versions carry ``adapter="adapter"`` (the run artifact holding the LoRA folder).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from sqlalchemy.orm import Session, sessionmaker

from registry.model_versions import ADAPTER_TAG, CHAMPION, NO_ADAPTER
from registry.promotion import Promotion, RegistryError
from trainer.config import TrainerSettings

BOOTSTRAP_RUN_NAME = "bootstrap-base-model"
BASE_MODEL_ARTIFACT = "base_model.json"
BASE_MODEL_TAG = "base_model"
SYSTEM_ACTOR = "system"


class Registry(Promotion):
    """Registration of versions (the trainer's side); alias moves come from ``Promotion``."""

    def __init__(self, settings: TrainerSettings, factory: sessionmaker[Session]) -> None:
        super().__init__(settings.resolved_mlflow_uri, settings.registered_model, factory)
        self.settings = settings

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

