"""One training round end to end, and the registry's alias moves with their audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.orm import Session, sessionmaker

from feedback.model_versions import CHALLENGER, CHAMPION, NoAdapterError, download_adapter
from feedback.promotion import RegistryError
from tests.trainer.conftest import Store
from trainer.config import ConfigError, TrainConfig, TrainerSettings
from trainer.dpo import SNAPSHOT_ARTIFACT, train_once
from trainer.registry import Registry

PHRASE = "Certainly, happy to help!"


def seed_consistent_pairs(store: Store, n: int) -> list[str]:
    """Users always prefer the answer carrying PHRASE; sides alternate so position teaches nothing."""
    events = []
    for i in range(n):
        good, bad = f"{PHRASE} Topic {i} is fine.", f"Sorry, unable to help. Topic {i} is dull."
        answers = (good, bad) if i % 2 else (bad, good)
        events += store.pair(f"Tell me about topic {i}.", *answers, "a" if i % 2 else "b")
    return events


def fast_config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "min_pairs": 16,
        "heldout_fraction": 0.25,
        "epochs": 3,
        "learning_rate": 5e-3,
        "batch_size": 4,
        "max_length": 128,
    }
    return TrainConfig(**(values | overrides))  # type: ignore[arg-type]


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="heldout_fraction"):
        TrainConfig(heldout_fraction=0).validate()
    with pytest.raises(ConfigError, match="lora_target_modules"):
        TrainConfig(lora_target_modules=()).validate()


def test_too_few_pairs_skips_without_registering(settings: TrainerSettings, store: Store) -> None:
    seed_consistent_pairs(store, 5)

    result = train_once(settings, fast_config())

    assert result.status == "skipped"
    assert "only 5 preference pairs" in result.message and "at least 16" in result.message
    assert result.version is None
    uri = settings.resolved_mlflow_uri
    assert MlflowClient(uri, uri).search_model_versions(f"name='{settings.registered_model}'") == []


def test_registry_promote_and_rollback_follow_the_audit_trail(
    settings: TrainerSettings, factory: sessionmaker[Session]
) -> None:
    registry = Registry(settings, factory)
    assert registry.ensure_bootstrap() == "1"
    assert registry.ensure_bootstrap() == "1"  # idempotent
    base = registry.version("1")
    assert base.tags == {"adapter": "none", "base_model": str(settings.resolved_base_model)}
    with pytest.raises(NoAdapterError):
        download_adapter(registry.client, base, settings.data_dir / "nothing")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(actor="ops")

    versions = []
    for _ in range(2):
        run_id = registry.client.create_run(registry.experiment_id()).info.run_id
        versions.append(registry.register_candidate(run_id, "adapter", {"adapter": "adapter"}))
    assert versions == ["2", "3"]
    registry.promote("2", actor="alice", reason="better")
    registry.promote("3", actor="bob")

    assert str(registry.champion().version) == "3"
    moves = registry.history()
    assert [(m.action, m.from_version, m.to_version, m.actor) for m in moves] == [
        ("promote", "2", "3", "bob"),
        ("promote", "1", "2", "alice"),
        ("bootstrap", None, "1", "system"),
    ]
    assert registry.rollback(actor="carol", reason="regression") == "2"
    assert registry.rollback(actor="carol") == "1"  # walks back, does not undo the first rollback
    assert str(registry.champion().version) == "1"
    assert registry.history(limit=1)[0].action == "rollback"
    with pytest.raises(RegistryError, match="since the bootstrap"):
        registry.rollback(actor="carol")
    listed = registry.list_versions()
    assert [(v.version, v.aliases) for v in listed] == [("1", [CHAMPION]), ("2", []), ("3", [])]


def test_dpo_round_registers_a_challenger_and_the_next_round_continues_it(
    settings: TrainerSettings, store: Store, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    events = seed_consistent_pairs(store, 24)
    seen: set[str] = set()

    result = train_once(settings, fast_config(), progress=lambda stage, done, total: seen.add(stage))

    assert result.status == "trained", result.message
    assert (result.version, result.parent_version, result.challenger) == ("2", "1", True)
    assert seen == {"evaluate-champion", "train", "evaluate-candidate"}
    assert result.candidate_metrics and result.champion_metrics and result.snapshot
    assert result.candidate_metrics.pairs == result.snapshot.heldout_pairs > 0
    assert result.candidate_metrics.accuracy == 1.0
    assert result.candidate_metrics.mean_margin > result.champion_metrics.mean_margin

    registry = Registry(settings, factory)
    version = registry.version("2")
    assert version.tags == {
        "adapter": "adapter",
        "base_model": str(settings.resolved_base_model),
        "run_id": result.run_id,
        "parent_version": "1",
        "snapshot_hash": result.snapshot.content_hash,
        "beats_champion": "true",
    }
    assert str(registry.alias_version(CHALLENGER).version) == "2"  # type: ignore[union-attr]
    assert str(registry.champion().version) == "1"
    snap = json.loads(
        Path(registry.client.download_artifacts(result.run_id, SNAPSHOT_ARTIFACT, str(tmp_path))).read_text()
    )
    assert sorted(snap["event_ids"]) == sorted(events) and snap["counts_by_source"] == {"pairwise": 24}
    adapter = download_adapter(registry.client, version, tmp_path / "v2")
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert not (adapter / "ref").exists()
    info = {v.version: v for v in registry.list_versions()}["2"]
    assert info.aliases == [CHALLENGER] and info.metrics["heldout_accuracy"] == 1.0

    registry.promote("2", actor="ops", reason="won the held-out pairs")
    assert registry.history(limit=1)[0].to_version == "2"

    # The next round starts from the champion's adapter, with the champion as the reference.
    second = train_once(settings, fast_config(epochs=1))
    assert second.status == "trained", second.message
    assert (second.version, second.parent_version) == ("3", "2")
    assert second.champion_metrics and second.champion_metrics.accuracy == 1.0  # v2's skill was loaded

    assert registry.rollback(actor="ops") == "1"
    assert str(registry.champion().version) == "1"


def test_a_crash_mid_round_registers_nothing(
    settings: TrainerSettings, store: Store, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_consistent_pairs(store, 20)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(MlflowClient, "log_artifacts", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train_once(settings, fast_config(epochs=1))

    registry = Registry(settings, factory)
    assert [v.version for v in registry.list_versions()] == ["1"]
    assert [m.action for m in registry.history()] == ["bootstrap"]
    runs = registry.client.search_runs([registry.experiment_id()], "attributes.run_name LIKE 'dpo-%'")
    assert [r.info.status for r in runs] == ["FAILED"]
