"""The snapshot a round freezes, and the Great Expectations suite that refuses bad ones before training."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Quarantine
from feedback.db.session import transaction
from tests.trainer.conftest import Store
from tests.trainer.test_trainer_loop import fast_config, seed_consistent_pairs
from trainer.config import TrainerSettings
from trainer.pairs import load_examples, split_pairs
from trainer.registry import Registry
from trainer.round import VALIDATION_ARTIFACT, choose_algorithm, train_once
from trainer.snapshot import freeze, quarantined_among, validate


def checks(factory: sessionmaker[Session], min_rows: int = 4, min_label_share: float = 0.1) -> dict[str, bool]:
    pairs = load_examples(factory).pairs
    frozen = freeze(factory, "dpo", *split_pairs(pairs, 0.25))
    result = validate(frozen, quarantined_among(factory, frozen.event_ids), min_rows, min_label_share)
    return {c.name: c.passed for c in result.checks}


def test_a_clean_snapshot_passes_and_records_its_lineage(store: Store, factory: sessionmaker[Session]) -> None:
    events = seed_consistent_pairs(store, 8)
    train, heldout = split_pairs(load_examples(factory).pairs, 0.25)

    frozen = freeze(factory, "dpo", train, heldout)

    assert frozen.event_ids == sorted(map(store.key, events)) and frozen.counts_by_label == {"a": 4, "b": 4}
    assert (frozen.train_examples + frozen.heldout_examples, frozen.counts_by_source) == (8, {"pairwise": 8})
    assert frozen.window_start and frozen.window_end and frozen.window_start <= frozen.window_end
    assert frozen.content_hash == freeze(factory, "dpo", train, heldout).content_hash
    assert frozen.content_hash != freeze(factory, "dpo", train[1:], heldout).content_hash
    assert all(checks(factory).values())


def test_the_suite_names_each_problem(store: Store, factory: sessionmaker[Session]) -> None:
    seed_consistent_pairs(store, 6)
    assert not checks(factory, min_rows=7)["min_rows"]

    for i in range(6):  # a bot: always "a", on every pair
        store.pair(f"Bot topic {i}", "x", f"y {i}", "a")
    assert not checks(factory, min_label_share=0.4)["label_balance"]

    store.pair("Replayed", "good", "bad", "a", "a")  # one user voting twice on one pair
    assert not checks(factory)["unique_votes"]


def test_a_snapshot_with_quarantined_events_trains_nothing(
    settings: TrainerSettings, store: Store, factory: sessionmaker[Session]
) -> None:
    events = seed_consistent_pairs(store, 20)
    with transaction(factory) as session:  # flagged after it was accepted
        session.add(Quarantine(event_id=events[3], type="pairwise", app_id=store.app_id, user_id="user",
                               reasons=["bot"], evidence={}, payload={}, created_at=datetime.now(UTC)))

    result = train_once(settings, fast_config())

    assert result.status == "rejected" and "no_quarantined" in result.message and events[3] in result.message
    registry = Registry(settings, factory)
    assert [v.version for v in registry.list_versions()] == ["1"]
    run = registry.client.get_run(str(result.run_id))
    assert run.info.status == "FINISHED" and run.data.tags["flywheel.outcome"] == "snapshot_rejected"
    assert VALIDATION_ARTIFACT in {a.path for a in registry.client.list_artifacts(str(result.run_id))}


def test_an_app_reusing_another_apps_event_ids_blocks_nothing(store: Store, factory: sessionmaker[Session]) -> None:
    events = seed_consistent_pairs(store, 8)
    copycat, third = Store(factory), Store(factory)
    for i, event_id in enumerate(events):  # the same ids, on the copycat's own pairs
        copycat.pair(f"Copied topic {i}.", "x", f"y {i}", "a" if i % 2 else "b", event_ids=[event_id])
    with transaction(factory) as session:  # a third app's event with one of those ids, quarantined
        session.add(Quarantine(event_id=events[0], type="pairwise", app_id=third.app_id, user_id="user",
                               reasons=["bot"], evidence={}, payload={}, created_at=datetime.now(UTC)))

    frozen = freeze(factory, "dpo", *split_pairs(load_examples(factory).pairs, 0.25))

    assert frozen.event_ids == sorted([*map(store.key, events), *map(copycat.key, events)])
    assert len(frozen.events) == 16 and quarantined_among(factory, frozen.event_ids) == []
    assert all(checks(factory).values())
    with transaction(factory) as session:  # the same app's event, quarantined: that one counts
        session.add(Quarantine(event_id=events[0], type="pairwise", app_id=store.app_id, user_id="user",
                               reasons=["bot"], evidence={}, payload={}, created_at=datetime.now(UTC)))
    assert quarantined_among(factory, frozen.event_ids) == [store.key(events[0])]
    assert not checks(factory)["no_quarantined"]


def test_auto_picks_dpo_for_paired_feedback_and_kto_for_lone_thumbs(
    store: Store, factory: sessionmaker[Session], new_response_id: object
) -> None:
    seed_consistent_pairs(store, 4)
    assert choose_algorithm(fast_config(), load_examples(factory)) == "dpo"
    for i in range(10):
        rid = store.completion(new_response_id(), f"lone prompt {i}", f"answer {i}")  # type: ignore[operator]
        store.thumbs(rid, "up" if i % 2 else "down")
    assert choose_algorithm(fast_config(), load_examples(factory)) == "kto"
    assert choose_algorithm(fast_config(algorithm="dpo"), load_examples(factory)) == "dpo"
