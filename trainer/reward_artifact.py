"""The reward model as an MLflow artifact of its round, so a process other than the trainer can run it.

A round trains the reward model in a temporary folder; the scorer (``trainer/scorer.py``)
scores answers with it long after the round ended, so the round logs it under its run
(``log_reward_model``) and the scorer downloads it by run id (``download_reward_model``).
The folder holds each ensemble member (HF ``save_pretrained``), the tokenizer and the
encoder's ``max_length``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trainer.reward import RewardModel

REWARD_MODEL_ARTIFACT = "reward_model"
_MANIFEST = "reward_model.json"


def save_reward_model(model: RewardModel, directory: Path) -> None:
    for k, member in enumerate(model.members):
        member.save_pretrained(str(directory / f"member-{k}"))
    model.tokenizer.save_pretrained(str(directory / "tokenizer"))
    (directory / _MANIFEST).write_text(json.dumps({"members": len(model.members), "max_length": model.max_length}))


def load_reward_model(directory: Path) -> RewardModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest: dict[str, Any] = json.loads((directory / _MANIFEST).read_text())
    members = [AutoModelForSequenceClassification.from_pretrained(str(directory / f"member-{k}"))
               for k in range(manifest["members"])]
    return RewardModel(members, AutoTokenizer.from_pretrained(str(directory / "tokenizer")), manifest["max_length"])


def log_reward_model(client: MlflowClient, run_id: str, model: RewardModel) -> None:
    """Store the round's reward model under its run (called by the round after training it)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_reward_model(model, Path(tmp))
        client.log_artifacts(run_id, tmp, REWARD_MODEL_ARTIFACT)


def download_reward_model(client: MlflowClient, run_id: str, destination: Path) -> RewardModel | None:
    """The reward model a run logged, or None if it logged none."""
    try:
        path = client.download_artifacts(run_id, REWARD_MODEL_ARTIFACT, str(destination))
    except (MlflowException, OSError):
        return None
    return load_reward_model(Path(path)) if (Path(path) / _MANIFEST).exists() else None
