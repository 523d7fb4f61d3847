"""Constitutional revisions: the model critiques a stored answer against a written principle, then revises it.

**Which answers.** Answers served to users (a single answer or either side of a pair; never the
ones this command writes), newest first, one per prompt in a run (so one popular prompt does not
fill it), not revised before: up to ``limit``. Each meets one principle, picked by a hash of its
response id: a re-run picks the same, and many answers meet every principle about equally.

**How.** The answer's conversation, the answer, then the principle's critique request; the
model's critique; then its revision request (the form of Bai et al. 2022). Greedy, like the
judge. Nothing is stored for a revision that is ``empty`` (no critique or no revision),
``unchanged`` (the original again, up to whitespace), ``cut off`` by ``max_tokens`` (half an
answer would be taught as the better one) or ``failed`` (the engine refused the request): the
answer is tried again next run.

**Stored as.** A pair of its own, ``pair_<root>`` with the root derived from the original's
response id: two new completions, the original's text and the revision, on sides the root picks
(the revision is ``a`` half of the time, so a snapshot's label balance holds), of model version
``CONSTITUTION_VERSION`` (no version served them: the live numbers leave them out, and ``flywheel
label`` does not judge them), the lineage and the critique in ``params``; and the vote for the
revision, ``source=constitution``, by ``constitution:<model>``. All three go through Kafka and the
worker like the gateway's events, on one partition (one root). One pair per original answer,
whatever the principles file: its event ids are derived from the original's response id alone.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from feedback.ai.batch import Outcome
from feedback.ai.engine import Engine
from feedback.db.models import Completion
from feedback.events import CONSTITUTION_VERSION, ChatMessage, CompletionEvent, PairwiseEvent
from feedback.store import known_events

DEFAULT_PRINCIPLES = Path(__file__).with_name("principles.yaml")
REVISED, EMPTY, UNCHANGED, CUT_OFF = "revised", "empty", "unchanged", "cut off"
_PAGE = 500


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64)
    critique: str = Field(min_length=1, description="What to look for in the answer.")
    revision: str = Field(min_length=1, description="How to rewrite it, after the critique.")


def load_principles(path: Path = DEFAULT_PRINCIPLES) -> list[Principle]:
    """The principles of a YAML file (a list of name, critique, revision); ValueError saying what is wrong."""
    try:
        principles = TypeAdapter(list[Principle]).validate_python(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"{path} is not a list of principles (name, critique, revision): {exc}") from exc
    names = [p.name for p in principles]
    if not principles or len(set(names)) != len(names):
        raise ValueError(f"{path} must name at least one principle, each once (names: {names})")
    return principles


@dataclass(frozen=True)
class Original:
    """A served answer to revise, with what its copy in the revision's pair needs."""

    response_id: str
    app_id: int
    model_version: str
    messages: tuple[dict[str, Any], ...]
    answer: str
    finish_reason: str | None
    latency_ms: float


@dataclass(frozen=True)
class RevisionIds:
    """The ids of an original's revision pair: the same on every run, so it is stored once."""

    root: str

    @classmethod
    def of(cls, response_id: str) -> RevisionIds:
        return cls(hashlib.sha256(f"constitution\n{response_id}".encode()).hexdigest()[:32])

    @property
    def pair_id(self) -> str:
        return f"pair_{self.root}"

    @property
    def vote_event_id(self) -> str:
        return f"con-{self.root}"

    @property
    def revised_side(self) -> Literal["a", "b"]:
        return "a" if int(self.root[-1], 16) % 2 == 0 else "b"


def pick(principles: Sequence[Principle], response_id: str) -> Principle:
    """The principle an answer meets: stable across runs, spread evenly over many answers."""
    return principles[int(hashlib.sha256(response_id.encode()).hexdigest()[:8], 16) % len(principles)]


def answers_to_revise(session: Session, limit: int) -> list[Original]:
    """Up to ``limit`` served answers, newest first, one per prompt, not revised before (see the module doc)."""
    newest = (
        select(Completion)
        .where(Completion.model_version != CONSTITUTION_VERSION, Completion.answer != "")
        .order_by(Completion.created_at.desc(), Completion.response_id)
    )
    found: list[Original] = []
    prompts: set[str] = set()
    for offset in itertools.count(step=_PAGE):
        page = session.scalars(newest.limit(_PAGE).offset(offset)).all()
        if not page:
            break
        known = known_events(session, {RevisionIds.of(c.response_id).vote_event_id for c in page})
        for c in page:
            if c.prompt_hash in prompts or (c.app_id, RevisionIds.of(c.response_id).vote_event_id) in known:
                continue
            prompts.add(c.prompt_hash)
            found.append(Original(c.response_id, c.app_id, c.model_version, tuple(c.messages), c.answer,
                                  c.finish_reason, c.latency_ms))
            if len(found) == limit:
                return found
    return found


def _same(one: str, other: str) -> bool:
    return " ".join(one.split()) == " ".join(other.split())


def revise(engine: Engine, model: str, principles: Sequence[Principle], original: Original,
           max_tokens: int) -> Outcome:
    """Critique, then revision; the pair and the vote for the revision, or why there is none."""
    principle = pick(principles, original.response_id)
    asked = [*original.messages, {"role": "assistant", "content": original.answer},
             {"role": "user", "content": principle.critique}]
    critique = engine.chat(model, asked, max_tokens).text.strip()
    if not critique:
        return Outcome(EMPTY)
    revision = engine.chat(model, [*asked, {"role": "assistant", "content": critique},
                                   {"role": "user", "content": principle.revision}], max_tokens)
    text = revision.text.strip()
    if not text:
        return Outcome(EMPTY)
    if _same(text, original.answer):
        return Outcome(UNCHANGED)
    if revision.finish_reason == "length":
        return Outcome(CUT_OFF)
    ids = RevisionIds.of(original.response_id)
    lineage = {"original_response_id": original.response_id, "original_model_version": original.model_version,
               "principle": principle.name, "model": model}
    revised = _completion(original, ids, ids.revised_side, text, revision.finish_reason, revision.seconds * 1000,
                          {**lineage, "role": "revision", "critique": critique})
    copy = _completion(original, ids, "b" if ids.revised_side == "a" else "a", original.answer,
                       original.finish_reason, original.latency_ms, {**lineage, "role": "original"})
    vote = PairwiseEvent(event_id=ids.vote_event_id, app_id=original.app_id, pair_id=ids.pair_id,
                         choice=ids.revised_side, user_id=f"constitution:{model}", source="constitution",
                         comment=f"principle {principle.name}")
    return Outcome(REVISED, (*sorted((revised, copy), key=lambda c: c.response_id), vote))


def _completion(original: Original, ids: RevisionIds, side: str, answer: str, finish_reason: str | None,
                latency_ms: float, lineage: dict[str, Any]) -> CompletionEvent:
    """One side of the revision pair: the original's conversation and app, no end user (nobody was served it)."""
    return CompletionEvent(
        event_id=f"{ids.vote_event_id}-{side}", app_id=original.app_id, response_id=f"resp_{ids.root}_{side}",
        pair_id=ids.pair_id, model_version=CONSTITUTION_VERSION,
        messages=[ChatMessage.model_validate(m) for m in original.messages], answer=answer,
        finish_reason=finish_reason, params={"constitution": lineage}, latency_ms=latency_ms,
    )
