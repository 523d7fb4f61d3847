"""The registry contract: alias names, version tags, and fetching a version's LoRA adapter or full model.

Part of the contract between the trainer, which registers versions, and the gateway,
which loads them into the engine; so it lives here, below both, and imports no torch.

A version is one of three kinds, told by its tags:
- an **adapter**: ``adapter`` names the artifact path of its LoRA adapter inside the version's run
  (``"adapter"``); ``base_version``, if set, names the full-model version it applies to (without
  it, the deployment's base model). It is loaded into whichever engine serves that base.
- a **full model**: ``adapter`` is ``"none"`` and ``model`` names the artifact path of an HF model
  folder (``"model"``, with its ``config.json``) in the version's run. It needs an engine of its
  own, so the gateway swaps it blue/green (``serving.champion``); ``flywheel models register`` makes one.
- the **base model** alone: ``adapter`` is ``"none"`` and no ``model`` tag: served by the
  deployment's engine as it started.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

CHAMPION = "champion"  # the version that answers users
CHALLENGER = "challenger"  # a candidate that beat the champion on held-out pairs
CANARY = "canary"  # a version a share of end users is sent to (sticky per user), judged by their feedback
ADAPTER_TAG = "adapter"
LOAD_ERROR_TAG = "load_error"  # set by a gateway that could not load the version (when, why); removed once it loads
NO_ADAPTER = "none"
ADAPTER_ARTIFACT_PATH = "adapter"
MODEL_TAG = "model"  # a full-model version: the artifact path of its HF model folder in its run
MODEL_ARTIFACT_PATH = "model"
MODEL_SOURCE_TAG = "model_source"  # where a full-model version was registered from (for people; never read back)
BASE_VERSION_TAG = "base_version"  # an adapter trained on a full-model version: that version


class NoAdapterError(LookupError):
    """The version is the base model alone; there is nothing to download."""


def adapter_artifact_path(version: ModelVersion) -> str | None:
    """The adapter's artifact path within the version's run, or None for a base-model version."""
    path = (version.tags or {}).get(ADAPTER_TAG, NO_ADAPTER)
    return None if path == NO_ADAPTER else path


def model_artifact_path(version: ModelVersion) -> str | None:
    """A full-model version's model folder, as an artifact path within its run; None for any other version."""
    if adapter_artifact_path(version) is not None:
        return None
    return (version.tags or {}).get(MODEL_TAG) or None


def base_version(version: ModelVersion) -> str | None:
    """The full-model version an adapter applies to; None: the deployment's base model."""
    return (version.tags or {}).get(BASE_VERSION_TAG) or None


def download_adapter(client: MlflowClient, version: ModelVersion, dest: Path) -> Path:
    """Download the version's adapter into ``dest`` (a folder PEFT and vLLM load) and return it."""
    path = adapter_artifact_path(version)
    if path is None:
        raise NoAdapterError(f"version {version.version} of {version.name!r} is the base model; it has no adapter")
    return _download(client, version, path, dest, "adapter_config.json")


def download_model(client: MlflowClient, version: ModelVersion, dest: Path) -> Path:
    """Download a full-model version's HF model folder into ``dest`` (what an engine is started on) and return it."""
    path = model_artifact_path(version)
    if path is None:
        raise LookupError(f"version {version.version} of {version.name!r} is not a full model (no tag {MODEL_TAG!r})")
    return _download(client, version, path, dest, "config.json")


def _download(client: MlflowClient, version: ModelVersion, path: str, dest: Path, marker: str) -> Path:
    """Download the artifact ``path`` of the version's run into ``dest``, a folder holding ``marker``.

    Versions are immutable, so an existing ``dest/<marker>`` means it is already here. The
    download goes to a sibling temp dir and is renamed into place, so a crash never leaves a
    half folder that a loader would take for a whole one.
    """
    if (dest / marker).exists():
        return dest
    if not version.run_id:
        raise LookupError(f"version {version.version} of {version.name!r} names no run to download from")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        local = Path(client.download_artifacts(version.run_id, path, str(tmp)))
        if not (local / marker).exists():
            raise LookupError(f"artifact {path!r} of run {version.run_id} holds no {marker}")
        if dest.exists():
            shutil.rmtree(dest)
        local.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
