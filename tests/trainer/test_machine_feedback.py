"""Machine feedback in training: AI verdicts and constitutional pairs counted apart from people's votes in the
snapshot, people's votes outranking a judge's, and constitutional pairs training a DPO round.

The verdicts are made by ``feedback.ai`` on the engine double and stored by the worker's own path
(``store_batch`` with the filter pipeline), so the snapshot reads what a deployment would hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from feedback.ai.batch import Send, run
from feedback.ai.constitution import answers_to_revise, load_principles, revise
from feedback.ai.label import Rubric, judge_pair, pairs_to_label
from feedback.db.session import transaction
from feedback.events import Event
from feedback.filters import FilterSettings, Pipeline
from feedback.store import store_batch
from tests.engine_double import EngineDouble, prefers
from tests.trainer.conftest import Store, response_id
from trainer.config import TrainConfig, TrainerSettings
from trainer.pairs import load_examples, split_pairs
from trainer.round import train_once
from trainer.snapshot import freeze, quarantined_among, validate

JUDGE = "judge"


def into_store(factory: sessionmaker[Session]) -> Send:
    """The worker's path from a batch of events to the store: the filter pipeline, then the idempotent insert."""
    pipeline = Pipeline(FilterSettings(_env_file=None))  # type: ignore[call-arg]

    def send(batch: Sequence[Event]) -> None:
        with transaction(factory) as session:
            store_batch(session, batch, pipeline)

    return send


def label(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        pairs = pairs_to_label(session, JUDGE, 100)
    with EngineDouble(prefers("Paris")).engine() as engine:
        run(pairs, lambda pair: judge_pair(engine, JUDGE, Rubric.load(), pair), into_store(factory))


def unvoted_pair(store: Store, prompt: str, answer_a: str, answer_b: str) -> str:
    """A served pair nobody voted on; its pair id."""
    root = hashlib.md5(prompt.encode()).hexdigest()
    store.completion(f"resp_{root}_a", prompt, answer_a, f"pair_{root}")
    store.completion(f"resp_{root}_b", prompt, answer_b, f"pair_{root}")
    return f"pair_{root}"


def test_the_snapshot_counts_human_and_ai_feedback_apart(store: Store, factory: sessionmaker[Session]) -> None:
    for i in range(6):  # people decided these
        store.pair(f"Capital question {i}?", "Paris.", "Rome.", "a" if i % 2 else "b")
    for i in range(4):  # nobody voted on these: the judge labels them, Paris on alternating sides
        unvoted_pair(store, f"Unvoted question {i}?", *(("Paris.", "Oslo.") if i % 2 else ("Oslo.", "Paris.")))
    late = unvoted_pair(store, "Voted on after the judge?", "Paris.", "Bern.")
    label(factory)
    human = store.feedback("pairwise", pair_id=late, choice="b")  # a person disagrees with the judge's "a"

    examples = load_examples(factory)

    overruled = next(p for p in examples.pairs if p.chosen_response_id.startswith(late.replace("pair_", "resp_")))
    assert (overruled.source, overruled.chosen, overruled.event_ids) == ("pairwise", "Bern.", (store.key(human),))
    assert sorted(p.source for p in examples.pairs) == ["ai"] * 4 + ["pairwise"] * 7
    assert all(p.chosen == "Paris." and p.weight == 0.5 for p in examples.pairs if p.source == "ai")
    train, heldout = split_pairs(examples.pairs, 0.25)
    frozen = freeze(factory, "dpo", train, heldout)
    assert frozen.counts_by_source == {"pairwise": 7, "ai": 4}
    assert frozen.events_by_source == {"human": 7, "ai": 4}  # the judge's overruled verdict is in no example
    assert {(e.kind, e.source) for e in frozen.events} == {("pairwise", "human"), ("pairwise", "ai")}
    checks = validate(frozen, quarantined_among(factory, frozen.event_ids), 8, 0.1)
    assert checks.passed, checks.failures()


def test_constitutional_pairs_train_a_dpo_round(settings: TrainerSettings, store: Store,
                                                factory: sessionmaker[Session]) -> None:
    """(revision, original) pairs alone train the reward model and DPO on the tiny model, counted as constitution."""
    for i in range(20):
        store.completion(response_id(), f"Tell me about topic {i}.", "Sorry, unable to help.")

    def reply(body: dict[str, Any]) -> tuple[str, str]:
        turns = body["messages"]
        if len(turns) == 3:
            return "It does not help.", "stop"
        return f"Certainly, happy to help! {turns[0]['content'].removeprefix('Tell me about ')}", "stop"

    with factory() as session:
        originals = answers_to_revise(session, 100)
    with EngineDouble(reply).engine() as engine:
        tally = run(originals, lambda o: revise(engine, JUDGE, load_principles(), o, 64), into_store(factory))
    assert tally.statuses == {"revised": 20}

    result = train_once(settings, TrainConfig(min_pairs=16, heldout_fraction=0.25, epochs=1, batch_size=4,
                                              max_length=128, reward_max_steps=2, gates=False))

    assert (result.status, result.algorithm) == ("trained", "dpo"), result.message
    assert result.snapshot is not None and result.reward is not None
    assert result.snapshot.counts_by_source == {"constitution": 20}
    assert result.snapshot.events_by_source == {"constitution": 20}
    assert 0 < result.snapshot.counts_by_label.get("a", 0) < 20  # the revision sits on either side
