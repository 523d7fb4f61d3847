"""Preference pairs from the store: pairwise votes, thumbs per prompt, and the held-out split."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from tests.trainer.conftest import Store
from trainer.pairs import is_heldout, load_pairs, split_pairs


def test_pairwise_votes_become_pairs_and_ties_are_skipped(store: Store, factory: sessionmaker[Session]) -> None:
    (a_vote,) = store.pair("Say hi", "Hello there!", "Go away.", "a")
    (b_vote,) = store.pair("Say bye", "Whatever.", "Goodbye, take care!", "b")
    store.pair("Tie", "x", "y", "tie")
    store.pair("Bad", "x", "y", "both_bad")
    store.pair("Cancel", "x", "y", "a", "b")  # conflicting votes cancel out

    pairs = load_pairs(factory)

    assert [(p.chosen, p.rejected, p.source, p.event_ids) for p in pairs] == [
        ("Hello there!", "Go away.", "pairwise", (store.key(a_vote),)),
        ("Goodbye, take care!", "Whatever.", "pairwise", (store.key(b_vote),)),
    ]
    assert pairs[0].prompt == [{"role": "user", "content": "Say hi"}]
    assert pairs[0].chosen_response_id.endswith("_a") and pairs[1].chosen_response_id.endswith("_b")
    assert pairs[0].to_trl()["chosen"] == [{"role": "assistant", "content": "Hello there!"}]


def test_pairwise_votes_are_summed_by_weight(store: Store, factory: sessionmaker[Session]) -> None:
    events = store.pair("Q", "A answer", "B answer", "a", "a", "b")
    (pair,) = load_pairs(factory)
    assert (pair.chosen, pair.weight, set(pair.event_ids)) == ("A answer", 1.0, set(map(store.key, events)))


def test_thumbs_on_one_prompt_pair_each_up_with_each_down_capped(
    store: Store, factory: sessionmaker[Session], new_response_id: Callable[[], str]
) -> None:
    up1, up2, down1, down2 = (store.completion(new_response_id(), "Same prompt", f"answer {i}") for i in range(4))
    lonely = store.completion(new_response_id(), "Other prompt", "only up")
    events = {
        up1: store.thumbs(up1, "up", weight=2.0),
        up2: store.thumbs(up2, "up"),
        down1: store.thumbs(down1, "down", weight=2.0),
        down2: store.thumbs(down2, "down"),
    }
    store.thumbs(lonely, "up")  # no down-rated answer to the same prompt: no pair

    pairs = load_pairs(factory, max_pairs_per_prompt=3)

    assert {p.source for p in pairs} == {"thumbs"}
    # most confident first: (up1, down1) gets weight 2, the cap drops (up2, down2)
    assert [(p.chosen_response_id, p.rejected_response_id, p.weight) for p in pairs] == [
        (up1, down1, 2.0),
        (up1, down2, 1.0),
        (up2, down1, 1.0),
    ]
    assert pairs[0].event_ids == (store.key(events[up1]), store.key(events[down1]))


def test_split_is_deterministic_and_disjoint_by_prompt(store: Store, factory: sessionmaker[Session]) -> None:
    for i in range(40):
        store.pair(f"prompt {i}", "good", "bad", "a")
        store.pair(f"prompt {i}", "good again", "bad again", "a")  # same prompt twice
    pairs = load_pairs(factory)

    train, heldout = split_pairs(pairs, 0.25)

    assert (train, heldout) == split_pairs(list(pairs), 0.25)
    assert {p.prompt_hash for p in train}.isdisjoint({p.prompt_hash for p in heldout})
    assert 0 < len(heldout) < len(pairs) and len(train) + len(heldout) == len(pairs)
    assert all(is_heldout(p.prompt_hash, 0.25) for p in heldout)
