"""Training rounds end to end on a tiny model: DPO and KTO, the gates, the registry and its audit trail."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Completion, Feedback, RewardScore
from feedback.db.session import transaction
from registry.model_versions import CHALLENGER, CHAMPION, NoAdapterError, download_adapter
from registry.promotion import RegistryError
from tests.trainer.conftest import Store
from trainer.config import TrainConfig, TrainerSettings
from trainer.registry import Registry
from trainer.round import GATE_REPORT_ARTIFACT, SNAPSHOT_ARTIFACT, train_once
from trainer.schedule import run_every

PHRASE = "Certainly, happy to help!"
SHORT = "Sure."
VERBOSE = (
    "Great question! There is a lot to say here, so let me walk you through every single aspect in detail, "
    "covering the background, the history, the many subtle nuances and the practical consequences of each one."
)


def seed_consistent_pairs(store: Store, n: int, good: str = PHRASE, bad: str = "Sorry, unable to help.") -> list[str]:
    """Users always prefer ``good``; sides alternate so position teaches nothing."""
    events = []
    for i in range(n):
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
        "reward_max_steps": 2,
        "reward_learning_rate": 1e-4,
        "gate_prompts": 6,
        "gate_max_new_tokens": 24,
        "gate_bootstrap": 200,
    }
    return TrainConfig(**(values | overrides))  # type: ignore[arg-type]


def lenient(settings: TrainerSettings, **overrides: object) -> TrainerSettings:
    """Gates a tiny random model can pass (its reward model judges noise), except those a test tightens."""
    values: dict[str, object] = {
        "gate_win_rate_min_lower": -1.0,
        "gate_win_rate_min_upper": 0.0,
        "gate_accuracy_tolerance": 1.0,
        "gate_max_kl": 100.0,
        "gate_max_kl_base": 100.0,
        "gate_max_length_ratio": 100.0,
        "gate_max_format_increase": 1.0,
        "gate_max_non_word_increase": 1.0,
    }
    return settings.model_copy(update=values | overrides)


def test_config_is_validated_on_construction_and_names_the_field() -> None:
    with pytest.raises(ValidationError, match="heldout_fraction"):
        TrainConfig(heldout_fraction=0)
    with pytest.raises(ValidationError, match="lora_target_modules"):
        TrainConfig(lora_target_modules=())
    with pytest.raises(ValidationError, match="robust"):
        TrainConfig(loss_type="robust")
    with pytest.raises(ValidationError, match="KTO"):
        TrainConfig(algorithm="kto", batch_size=1)
    with pytest.raises(ValidationError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValidationError, match="learning_rate"):
        TrainConfig().learning_rate = 0  # assignments are validated too
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(learning_rat=1e-4)  # type: ignore[call-arg]  # a misspelt field is refused, not ignored


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


def artifact(registry: Registry, run_id: str | None, path: str, dest: Path) -> Path:
    assert run_id
    return Path(registry.client.download_artifacts(run_id, path, str(dest)))


def test_dpo_round_passes_the_gates_and_a_drifting_candidate_is_blocked(
    settings: TrainerSettings, store: Store, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Round 1 passes every gate and becomes challenger; round 2, pushed towards verbosity, fails the drift gate."""
    events = seed_consistent_pairs(store, 24)
    seen: set[str] = set()

    result = train_once(lenient(settings), fast_config(), progress=lambda stage, done, total: seen.add(stage))

    assert result.status == "trained", result.message
    assert result.gates and result.gates.passed, result.gates
    assert (result.version, result.parent_version, result.challenger, result.algorithm) == ("2", "1", True, "dpo")
    assert {"reward-model-1", "reward-scores", "train", "evaluate-champion", "evaluate-candidate",
            "generate-candidate"} <= seen
    assert result.candidate_metrics and result.champion_metrics and result.snapshot and result.reward
    assert result.candidate_metrics.pairs == result.snapshot.heldout_examples > 0
    assert result.candidate_metrics.accuracy == 1.0 and 0.0 <= result.reward.heldout_accuracy <= 1.0
    names = ["win_rate", "heldout_accuracy", "kl", "kl_base", "verbosity", "format", "non_words", "canaries"]
    assert [g.name for g in result.gates.gates] == names

    registry = Registry(settings, factory)
    version = registry.version("2")
    assert version.tags == {
        "adapter": "adapter",
        "base_model": str(settings.resolved_base_model),
        "run_id": result.run_id,
        "parent_version": "1",
        "snapshot_hash": result.snapshot.content_hash,
        "algorithm": "dpo",
        "gates_passed": "true",
    }
    assert str(registry.alias_version(CHALLENGER).version) == "2"  # type: ignore[union-attr]
    assert str(registry.champion().version) == "1"
    with factory() as session:  # the reward model's scores, for the worker's reliability filter
        scored = session.scalars(select(RewardScore)).all()
        voted = set(session.scalars(select(Completion.response_id).where(Completion.pair_id.in_(
            select(Feedback.pair_id)))))
    assert {s.response_id for s in scored} == voted and len(voted) == 48
    assert {(s.run_id, s.model_accuracy) for s in scored} == {(result.run_id, result.reward.heldout_accuracy)}
    snap = json.loads(artifact(registry, result.run_id, SNAPSHOT_ARTIFACT, tmp_path).read_text())
    assert sorted(snap["event_ids"]) == sorted([store.app_id, e] for e in events)  # keys: (app, event id)
    assert snap["counts_by_source"] == {"pairwise": 24}
    assert snap["counts_by_label"] == {"a": 12, "b": 12} and snap["window_start"] <= snap["window_end"]
    for plot in ("loss.png", "reward_margin.png", "win_rate.png"):
        assert artifact(registry, result.run_id, f"plots/{plot}", tmp_path).stat().st_size > 0
    adapter = download_adapter(registry.client, version, tmp_path / "v2")
    assert (adapter / "adapter_config.json").exists() and not (adapter / "ref").exists()
    info = {v.version: v for v in registry.list_versions()}["2"]
    assert info.metrics["heldout_accuracy"] == 1.0 and info.metrics["gate_kl_passed"] == 1.0

    # The scheduler skips a cycle: nothing arrived since version 2's snapshot.
    stop, results = threading.Event(), []

    def cycle() -> None:
        results.append(train_once(settings, fast_config(), min_new_feedback=1))
        stop.set()

    run_every(3600, cycle, stop)
    assert results[0].status == "skipped" and "only 0 new accepted feedback events" in results[0].message

    registry.promote("2", actor="ops", reason="won its gates")
    with transaction(factory) as session:  # the filters withdraw the old votes; users now reward verbosity
        session.execute(update(Feedback).where(Feedback.event_id.in_(events)).values(weight=0.0))
    seed_consistent_pairs(store, 24, good=VERBOSE, bad=SHORT)

    drifted = train_once(lenient(settings, gate_max_kl=1e-4), fast_config(epochs=1, reward_model=False))

    assert drifted.status == "trained", drifted.message
    assert (drifted.version, drifted.parent_version, drifted.challenger) == ("3", "2", False)
    assert drifted.gates and drifted.gates.failed() == ["kl"], drifted.gates
    assert "failed gates kl" in drifted.message
    assert registry.version("3").tags["gates_passed"] == "false"
    assert str(registry.alias_version(CHALLENGER).version) == "2"  # type: ignore[union-attr]
    report = json.loads(artifact(registry, drifted.run_id, GATE_REPORT_ARTIFACT, tmp_path).read_text())
    kl = next(g for g in report["gates"] if g["name"] == "kl")
    assert report["passed"] is False and kl["status"] == "failed" and kl["value"] > 1e-4
    win_rate = next(g for g in report["gates"] if g["name"] == "win_rate")
    assert win_rate["status"] == "skipped"  # the reward model was switched off for this round

    assert registry.rollback(actor="ops") == "1"


def test_kto_learns_from_lone_thumbs(settings: TrainerSettings, store: Store, new_response_id: object) -> None:
    """Thumbs on answers with no opposite rating on the same prompt: auto picks KTO, balanced by the labels."""
    for i in range(24):
        good = i % 3 != 0  # two ups for every down: KTO's weights rebalance them
        answer = f"{PHRASE} Topic {i}." if good else f"Sorry, unable to help with topic {i}."
        rid = store.completion(new_response_id(), f"Tell me about topic {i}.", answer)  # type: ignore[operator]
        store.thumbs(rid, "up" if good else "down")

    result = train_once(lenient(settings), fast_config(epochs=1))

    assert result.status == "trained", result.message
    assert (result.algorithm, result.version, result.challenger) == ("kto", "2", True)
    assert result.snapshot and result.snapshot.counts_by_label == {"up": 16, "down": 8}
    assert result.snapshot.counts_by_source == {"thumbs": 24}
    assert result.gates and {g.name: g.status for g in result.gates.gates}["win_rate"] == "skipped"  # no pairs


def test_robust_dpo_trains(settings: TrainerSettings, store: Store) -> None:
    seed_consistent_pairs(store, 20)
    result = train_once(
        settings, fast_config(epochs=1, loss_type="robust", label_smoothing=0.1, reward_model=False, gates=False)
    )
    assert result.status == "trained" and result.algorithm == "dpo", result.message
    assert not result.challenger and "gates were off" in result.message


def test_a_crash_mid_round_registers_nothing(
    settings: TrainerSettings, store: Store, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_consistent_pairs(store, 20)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(MlflowClient, "log_artifacts", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train_once(settings, fast_config(epochs=1, reward_model=False, gates=False))

    registry = Registry(settings, factory)
    assert [v.version for v in registry.list_versions()] == ["1"]
    assert [m.action for m in registry.history()] == ["bootstrap"]
    runs = registry.client.search_runs([registry.experiment_id()], "attributes.run_name LIKE 'dpo-%'")
    assert [r.info.status for r in runs] == ["FAILED"]
