"""Training examples built from the accepted feedback in the store: pairs for DPO, rated answers for KTO.

Two kinds of feedback give a pair (chosen answer, rejected answer) for one prompt:

- **pairwise**: a vote ``a``/``b`` on a pair ``pair_<root>`` chooses between the completions
  ``resp_<root>_a`` and ``resp_<root>_b``. All votes on one pair are summed by weight, so
  conflicting votes cancel instead of teaching both directions; ``tie`` and ``both_bad``
  say nothing about the order and are skipped.
- **thumbs**: answers to the same prompt (same ``prompt_hash``) are scored by their summed
  weighted ratings; every up-rated answer is paired with every down-rated one, the most
  confident first, capped per prompt so one popular prompt cannot dominate a round.

Machine votes on a pair (an AI judge's, or a constitutional revision's preference for the
revision: ``feedback.source``) give it the same way, with their own ``Source``, so a snapshot
counts them apart; but only where no end user voted on the pair (a tie or "both bad" included):
people outrank every machine, and the two are never summed.

KTO learns from single rated answers (``RatedAnswer``): every thumbs-rated answer with a
non-zero net score, plus both halves of every pairwise pair, so no signal is dropped for
want of a partner.

The filters' event weights reach training through ``resample_by_weight``: TRL's DPO, KTO
and reward trainers take no per-example weight, so the training set is redrawn with
probability proportional to weight.

The held-out split hashes the prompt hash, so it is deterministic across rounds and one
prompt never sits in both splits (a model must not be judged on prompts it trained on).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Completion, Feedback

Source = Literal["pairwise", "thumbs", "ai", "constitution"]
"""Where an example comes from: end users' pairwise votes or thumbs, or a machine (see ``PAIR_DECIDERS``)."""

PAIR_DECIDERS: tuple[tuple[str, Source], ...] = (
    ("human", "pairwise"), ("ai", "ai"), ("constitution", "constitution"))
"""Whose votes decide a pair, in order of precedence (a ``feedback.source``), and the source of its example."""


class EventKey(NamedTuple):
    """What names one stored vote: an ``event_id`` is the app's idempotency key, unique only per app.

    Keying by the id alone would let one app's reused ids stand for (or block) another app's votes.
    """

    app_id: int
    event_id: str

    @classmethod
    def of(cls, fb: Feedback) -> EventKey:
        return cls(fb.app_id, fb.event_id)


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
    event_ids: tuple[EventKey, ...]
    weight: float

    def to_trl(self) -> dict[str, list[dict[str, str]]]:
        return {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


@dataclass(frozen=True)
class RatedAnswer:
    """One KTO example: an answer and whether users wanted it, in TRL's unpaired format (see ``to_trl``)."""

    prompt_hash: str
    prompt: list[dict[str, str]]
    completion: str
    desirable: bool
    response_id: str
    source: Source
    event_ids: tuple[EventKey, ...]
    weight: float

    def to_trl(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "completion": [{"role": "assistant", "content": self.completion}],
            "label": self.desirable,
        }


class Example(Protocol):
    """What pairs and rated answers share: enough for the split, the snapshot and the weighting."""

    @property
    def prompt_hash(self) -> str: ...
    @property
    def prompt(self) -> list[dict[str, str]]: ...
    @property
    def source(self) -> Source: ...
    @property
    def event_ids(self) -> tuple[EventKey, ...]: ...
    @property
    def weight(self) -> float: ...


E = TypeVar("E", bound=Example)


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


def _accepted(kind: str, since: datetime | None) -> Select[Feedback]:
    """Accepted votes of one kind with a say (weight > 0), oldest first; only those after ``since`` if given."""
    query = select(Feedback).where(Feedback.type == kind, Feedback.weight > 0).order_by(Feedback.id)
    return query if since is None else query.where(Feedback.created_at > since)


def _pairwise_pairs(session: Session, since: datetime | None) -> list[PreferencePair]:
    votes: dict[str, list[Feedback]] = defaultdict(list)
    for fb in session.scalars(_accepted("pairwise", since)):  # ties too: a person's tie silences every machine
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
        decider, source = next((d, s) for d, s in PAIR_DECIDERS if any(fb.source == d for fb in events))
        decisive = [fb for fb in events if fb.source == decider and fb.choice in ("a", "b")]
        net = sum(fb.weight if fb.choice == "a" else -fb.weight for fb in decisive)
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
                source=source,
                event_ids=tuple(EventKey.of(fb) for fb in decisive),
                weight=abs(net),
            )
        )
    return pairs


@dataclass
class _Thumbs:
    """Net weighted rating per answer (up +weight, down -weight), its events, and the answers by prompt."""

    score: dict[str, float]
    events: dict[str, list[EventKey]]
    by_prompt: dict[str, list[Completion]]


def _thumbs(session: Session, since: datetime | None) -> _Thumbs:
    score: dict[str, float] = defaultdict(float)
    events: dict[str, list[EventKey]] = defaultdict(list)
    for fb in session.scalars(_accepted("thumbs", since).where(Feedback.rating.in_(("up", "down")))):
        if fb.response_id:
            score[fb.response_id] += fb.weight if fb.rating == "up" else -fb.weight
            events[fb.response_id].append(EventKey.of(fb))
    by_prompt: dict[str, list[Completion]] = defaultdict(list)
    if score:
        for c in session.scalars(
            select(Completion).where(Completion.response_id.in_(list(score))).order_by(Completion.response_id)
        ):
            by_prompt[c.prompt_hash].append(c)
    return _Thumbs(dict(score), dict(events), dict(by_prompt))


def _thumbs_pairs(thumbs: _Thumbs, max_pairs_per_prompt: int) -> list[PreferencePair]:
    score, events = thumbs.score, thumbs.events
    pairs = []
    for prompt_hash, completions in sorted(thumbs.by_prompt.items()):
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


def _rated_answers(thumbs: _Thumbs, pairwise: list[PreferencePair]) -> list[RatedAnswer]:
    answers = [
        RatedAnswer(
            prompt_hash=prompt_hash,
            prompt=prompt_messages(c.messages),
            completion=c.answer,
            desirable=thumbs.score[c.response_id] > 0,
            response_id=c.response_id,
            source="thumbs",
            event_ids=tuple(thumbs.events[c.response_id]),
            weight=abs(thumbs.score[c.response_id]),
        )
        for prompt_hash, completions in sorted(thumbs.by_prompt.items())
        for c in completions
        if thumbs.score[c.response_id] != 0
    ]
    for pair in pairwise:
        for text, response_id, desirable in (
            (pair.chosen, pair.chosen_response_id, True),
            (pair.rejected, pair.rejected_response_id, False),
        ):
            answers.append(
                RatedAnswer(
                    prompt_hash=pair.prompt_hash,
                    prompt=pair.prompt,
                    completion=text,
                    desirable=desirable,
                    response_id=response_id,
                    source=pair.source,
                    event_ids=pair.event_ids,
                    weight=pair.weight,
                )
            )
    return answers


@dataclass(frozen=True)
class FeedbackExamples:
    """Everything the accepted feedback supports: pairs for DPO and the reward model, rated answers for KTO."""

    pairs: list[PreferencePair]
    rated: list[RatedAnswer]


def load_examples(
    factory: sessionmaker[Session], max_pairs_per_prompt: int = 8, since: datetime | None = None
) -> FeedbackExamples:
    """Pairs (pairwise first, then from thumbs) and rated answers, in a stable order, from one read.

    ``since``: only votes cast after it (the round's "what the champion has not learnt yet").
    """
    with factory() as session:
        pairwise = _pairwise_pairs(session, since)
        thumbs = _thumbs(session, since)
    return FeedbackExamples(pairwise + _thumbs_pairs(thumbs, max_pairs_per_prompt), _rated_answers(thumbs, pairwise))


def load_pairs(factory: sessionmaker[Session], max_pairs_per_prompt: int = 8) -> list[PreferencePair]:
    """All preference pairs the accepted feedback supports, pairwise first, in a stable order."""
    return load_examples(factory, max_pairs_per_prompt).pairs


def is_heldout(prompt_hash: str, heldout_fraction: float) -> bool:
    """Stable per prompt: the same prompt lands in the same split in every round."""
    bucket = int.from_bytes(hashlib.sha256(prompt_hash.encode()).digest()[:8], "big") / 2**64
    return bucket < heldout_fraction


def split_pairs(examples: Sequence[E], heldout_fraction: float) -> tuple[list[E], list[E]]:
    """(train, heldout), split by prompt hash; works for pairs and rated answers alike."""
    train = [e for e in examples if not is_heldout(e.prompt_hash, heldout_fraction)]
    heldout = [e for e in examples if is_heldout(e.prompt_hash, heldout_fraction)]
    return train, heldout


def resample_by_weight(examples: Sequence[E], seed: int) -> list[E]:
    """The training set redrawn with replacement, each example with probability proportional to its weight.

    TRL's DPO, KTO and reward trainers average an unweighted loss (no per-example weight, TRL
    1.16), so the filters' weights enter through the sampling: in expectation the loss equals
    the weighted loss. With equal weights the set is returned unchanged, so unfiltered feedback
    trains exactly as a bare TRL run would.
    """
    weights = [e.weight for e in examples]
    if not examples or max(weights) == min(weights):
        return list(examples)
    return random.Random(seed).choices(list(examples), weights=weights, k=len(examples))
