"""The registry contract: alias names, version tags, and fetching a version's LoRA adapter.

Part of the contract between the trainer, which registers versions, and the gateway,
which loads them into the engine; so it lives here, below both, and imports no torch.

A version's tag ``adapter`` names the artifact path of its adapter inside the version's
run (``"adapter"``), or is ``"none"`` for a version that is the base model alone.
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


class NoAdapterError(LookupError):
    """The version is the base model alone; there is nothing to download."""


def adapter_artifact_path(version: ModelVersion) -> str | None:
    """The adapter's artifact path within the version's run, or None for a base-model version."""
    path = (version.tags or {}).get(ADAPTER_TAG, NO_ADAPTER)
    return None if path == NO_ADAPTER else path


def download_adapter(client: MlflowClient, version: ModelVersion, dest: Path) -> Path:
    """Download the version's adapter into ``dest`` (a folder PEFT and vLLM load) and return it.

    Versions are immutable, so an existing ``dest/adapter_config.json`` means it is already
    here. The download goes to a sibling temp dir and is renamed into place, so a crash
    never leaves a half adapter that a loader would take for a whole one.
    """
    path = adapter_artifact_path(version)
    if path is None:
        raise NoAdapterError(f"version {version.version} of {version.name!r} is the base model; it has no adapter")
    if (dest / "adapter_config.json").exists():
        return dest
    if not version.run_id:
        raise LookupError(f"version {version.version} of {version.name!r} names no run to download from")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        local = Path(client.download_artifacts(version.run_id, path, str(tmp)))
        if not (local / "adapter_config.json").exists():
            raise LookupError(f"artifact {path!r} of run {version.run_id} holds no adapter_config.json")
        if dest.exists():
            shutil.rmtree(dest)
        local.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
