"""Preference pairs built from the accepted feedback in the store.

Two kinds of feedback give a pair (chosen answer, rejected answer) for one prompt:

- **pairwise**: a vote ``a``/``b`` on a pair ``pair_<root>`` chooses between the completions
  ``resp_<root>_a`` and ``resp_<root>_b``. All votes on one pair are summed by weight, so
  conflicting votes cancel instead of teaching both directions; ``tie`` and ``both_bad``
  say nothing about the order and are skipped.
- **thumbs**: answers to the same prompt (same ``prompt_hash``) are scored by their summed
  weighted ratings; every up-rated answer is paired with every down-rated one, the most
  confident first, capped per prompt so one popular prompt cannot dominate a round.

The held-out split hashes the prompt hash, so it is deterministic across rounds and one
prompt never sits in both splits (a model must not be judged on prompts it trained on).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Completion, Feedback

Source = Literal["pairwise", "thumbs"]


@dataclass(frozen=True)
class PreferencePair:
    """One training example in TRL's conversational preference format (see ``to_trl``)."""

    prompt_hash: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    chosen_response_id: str
    rejected_response_id: str
    source: Source
    event_ids: tuple[str, ...]
    weight: float

    def to_trl(self) -> dict[str, list[dict[str, str]]]:
        return {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


@dataclass(frozen=True)
class Snapshot:
    """What a training round learned from: recorded in MLflow so every version has its lineage."""

    content_hash: str
    event_ids: list[str]
    counts_by_source: dict[str, int]
    train_pairs: int
    heldout_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(content: Any) -> str:
    """OpenAI content may be a list of parts; the trainer learns from the text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def prompt_messages(messages: Iterable[Any]) -> list[dict[str, str]]:
    """Reduce stored request messages to ``{role, content}``, the shape chat templates expect."""
    return [{"role": str(m["role"]), "content": _text(m.get("content"))} for m in messages if isinstance(m, dict)]


def _pairwise_pairs(session: Session) -> list[PreferencePair]:
    votes: dict[str, list[Feedback]] = defaultdict(list)
    for fb in session.scalars(
        select(Feedback)
        .where(Feedback.type == "pairwise", Feedback.choice.in_(("a", "b")), Feedback.weight > 0)
        .order_by(Feedback.id)
    ):
        if fb.pair_id:
            votes[fb.pair_id].append(fb)
    if not votes:
        return []
    roots = {pair_id: pair_id.removeprefix("pair_") for pair_id in votes}
    wanted = [f"resp_{root}_{side}" for root in roots.values() for side in "ab"]
    completions = {
        c.response_id: c for c in session.scalars(select(Completion).where(Completion.response_id.in_(wanted)))
    }
    pairs = []
    for pair_id, events in votes.items():
        a, b = completions.get(f"resp_{roots[pair_id]}_a"), completions.get(f"resp_{roots[pair_id]}_b")
        if a is None or b is None or a.answer == b.answer:
            continue
        net = sum(fb.weight if fb.choice == "a" else -fb.weight for fb in events)
        if net == 0:
            continue
        chosen, rejected = (a, b) if net > 0 else (b, a)
        pairs.append(
            PreferencePair(
                prompt_hash=a.prompt_hash,
                prompt=prompt_messages(a.messages),
                chosen=chosen.answer,
                rejected=rejected.answer,
                chosen_response_id=chosen.response_id,
                rejected_response_id=rejected.response_id,
                source="pairwise",
                event_ids=tuple(fb.event_id for fb in events),
                weight=abs(net),
            )
        )
    return pairs


def _thumbs_pairs(session: Session, max_pairs_per_prompt: int) -> list[PreferencePair]:
    score: dict[str, float] = defaultdict(float)
    events: dict[str, list[str]] = defaultdict(list)
    for fb in session.scalars(
        select(Feedback)
        .where(Feedback.type == "thumbs", Feedback.rating.in_(("up", "down")), Feedback.weight > 0)
        .order_by(Feedback.id)
    ):
        if fb.response_id:
            score[fb.response_id] += fb.weight if fb.rating == "up" else -fb.weight
            events[fb.response_id].append(fb.event_id)
    if not score:
        return []
    by_prompt: dict[str, list[Completion]] = defaultdict(list)
    for c in session.scalars(
        select(Completion).where(Completion.response_id.in_(list(score))).order_by(Completion.response_id)
    ):
        by_prompt[c.prompt_hash].append(c)
    pairs = []
    for prompt_hash, completions in sorted(by_prompt.items()):
        ups = sorted((c for c in completions if score[c.response_id] > 0), key=lambda c: -score[c.response_id])
        downs = sorted((c for c in completions if score[c.response_id] < 0), key=lambda c: score[c.response_id])
        made = 0
        for up in ups:
            for down in downs:
                if made >= max_pairs_per_prompt:
                    break
                if up.answer == down.answer:
                    continue
                pairs.append(
                    PreferencePair(
                        prompt_hash=prompt_hash,
                        prompt=prompt_messages(up.messages),
                        chosen=up.answer,
                        rejected=down.answer,
                        chosen_response_id=up.response_id,
                        rejected_response_id=down.response_id,
                        source="thumbs",
                        event_ids=(*events[up.response_id], *events[down.response_id]),
                        # both halves must be confident: the weaker one bounds the pair
                        weight=min(score[up.response_id], -score[down.response_id]),
                    )
                )
                made += 1
    return pairs


def load_pairs(factory: sessionmaker[Session], max_pairs_per_prompt: int = 8) -> list[PreferencePair]:
    """All preference pairs the accepted feedback supports, pairwise first, in a stable order."""
    with factory() as session:
        return _pairwise_pairs(session) + _thumbs_pairs(session, max_pairs_per_prompt)


def is_heldout(prompt_hash: str, heldout_fraction: float) -> bool:
    """Stable per prompt: the same prompt lands in the same split in every round."""
    bucket = int.from_bytes(hashlib.sha256(prompt_hash.encode()).digest()[:8], "big") / 2**64
    return bucket < heldout_fraction


def split_pairs(
    pairs: list[PreferencePair], heldout_fraction: float
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, heldout), split by prompt hash."""
    train = [p for p in pairs if not is_heldout(p.prompt_hash, heldout_fraction)]
    heldout = [p for p in pairs if is_heldout(p.prompt_hash, heldout_fraction)]
    return train, heldout


def snapshot(train: list[PreferencePair], heldout: list[PreferencePair]) -> Snapshot:
    """Lineage of one round: a hash of exactly the pairs used, so two versions can be compared."""
    everything = train + heldout
    canonical = json.dumps(
        {"train": [asdict(p) for p in train], "heldout": [asdict(p) for p in heldout]},
        sort_keys=True,
        ensure_ascii=False,
    )
    return Snapshot(
        content_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        event_ids=sorted({e for p in everything for e in p.event_ids}),
        counts_by_source=dict(Counter(p.source for p in everything)),
        train_pairs=len(train),
        heldout_pairs=len(heldout),
    )
